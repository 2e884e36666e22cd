"""The generation phase of `kubedistill run` (`spec.generation`): a teacher answers the training prompts
before training, into `<output>/generated/<job>.jsonl`, and training reads that file.

`prompts` finds the prompts in the training data, `store` keeps the generated file (resumable, one line per
sample), `endpoint` asks an OpenAI-compatible API, `engine` the job's own teacher on Ray, and `phase`
orders them."""
