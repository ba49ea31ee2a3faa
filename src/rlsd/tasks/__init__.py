"""Built-in verifiable reasoning tasks and tiny local models."""
