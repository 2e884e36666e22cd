"""Distillation algorithms: the loss of one micro-batch, given student and teacher hidden states."""
