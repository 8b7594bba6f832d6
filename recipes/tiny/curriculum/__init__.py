"""The tiny model's supervised curriculum: teach a 2 M-parameter model, from random weights, the
Video-MTR reply format and to read its frames, before RL.

Before RL (Video-MTR, arXiv 2508.20478) the policy must already produce well-formed turns and
say what its frames show; otherwise every rollout is invalid and the reward is flat. Video-MTR
has no such stage for its released model; the tiny model needs one because it starts from random
weights. It trains on `vmtr synth` items only, whose generator records where each needle is.

Modules, each one idea: `episodes` (scripted protocol trajectories and their retrieve rules),
`drills` (reading and answer drills), `weights` (content-token loss weights), `vision_aux` (the
auxiliary needle loss on the vision tower), `frames` (decoded pools cached on disk), `reading`
(teacher-forced reading accuracy), `heldout` (the held-out check through `vmtr.eval.runner`),
`config` and `trainer` (one stage), `__main__` (the command line:
``python -m recipes.tiny.curriculum --out DIR --data DIR ...`` from the repository root).
"""
