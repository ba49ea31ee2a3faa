"""Shared test helpers: one loss and its gradients from a built trainer, "these two updates are the same", and
spies on the teacher pass."""

import contextlib

import torch


def loss_and_grads(trainer, batch):
    """(loss, {parameter name: gradient}) of `trainer.compute_loss` on `batch`, from zeroed gradients."""
    trainer.model.train()
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def assert_same_update(trainer, reference, batch) -> dict:
    """`trainer` and `reference` give the same loss and bit-identical gradients on `batch`; returns the reference's
    gradients (for the follow-up check that switching the method's term on changes them: the test can fail)."""
    loss, grads = loss_and_grads(trainer, batch)
    loss_ref, grads_ref = loss_and_grads(reference, batch)
    assert torch.equal(loss, loss_ref)
    assert grads.keys() == grads_ref.keys() and grads
    for name in grads:
        assert torch.equal(grads[name], grads_ref[name]), name
    return grads_ref


def update_differs(trainer, batch, grads_ref) -> bool:
    _, grads = loss_and_grads(trainer, batch)
    return any(not torch.equal(grads[n], grads_ref[n]) for n in grads)


def flag_teacher_weights(trainer) -> dict:
    """`flag["on"]` is True exactly while the trainer's teacher weights are active (a forward hook can read it)."""
    flag, original = {"on": False}, trainer.teacher.activate

    @contextlib.contextmanager
    def activate():
        flag["on"] = True
        try:
            with original() as module:
                yield module
        finally:
            flag["on"] = False

    trainer.teacher.activate = activate
    return flag


def record_teacher_texts(trainer) -> list:
    """One list per teacher-pass call: the decoded (unpadded) teacher inputs it scored."""
    seen, original = [], trainer.teacher_pass.logps

    def spy(ids, mask, output, **kwargs):
        seen.append([trainer.processing_class.decode(i[m.bool()]) for i, m in zip(ids, mask)])
        return original(ids, mask, output, **kwargs)

    trainer.teacher_pass.logps = spy
    return seen
