"""Distillation algorithms: what one micro-batch's loss is, given student outputs and teacher hidden states."""
