"""Shared test helper: one loss and its gradients from a built trainer, on a given batch."""


def loss_and_grads(trainer, batch):
    """(loss, {parameter name: gradient}) of `trainer.compute_loss` on `batch`, from zeroed gradients."""
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
