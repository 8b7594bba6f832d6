#!/usr/bin/env bash
# Video-MTR RL of Qwen2.5-VL-7B-Instruct on one 8-GPU node: PPO with a critic (verl's GAE over
# per-turn rewards = vmtr's bi-level GAE at gamma = lam = 1), FSDP, vLLM rollouts, and the released
# run's hyperparameters: 16 prompts x 2 samples, 500 steps, actor lr 1e-6, critic lr 1e-5, clip 0.2,
# entropy 0.001, grad clip 1.0, KL-in-reward 0.001, temperature 0.7, top-p 0.95.
#
#   python -m vmtr.integrations.verl.data train.json data/train.parquet   # Video-MTR JSON -> parquet
#   python -m vmtr.integrations.verl.data val.json data/val.parquet
#   bash examples/verl/run_qwen2_5_vl_7b.sh [more hydra overrides]
#
# Turn-level GRPO instead of PPO: algorithm.adv_estimator=vmtr_grpo_turn (and drop the critic lines).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TRAIN=${TRAIN:-data/train.parquet}
VAL=${VAL:-data/val.parquet}
MODEL=${MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
# registers the agent loop and the estimator in every verl process
export VERL_USE_EXTERNAL_MODULES=vmtr.integrations.verl

python -m verl.trainer.main_ppo \
  trainer.use_v1=False \
  algorithm.adv_estimator=gae \
  algorithm.gamma=1.0 \
  algorithm.lam=1.0 \
  algorithm.use_kl_in_reward=True \
  algorithm.kl_ctrl.kl_coef=0.001 \
  data.train_files=${TRAIN} \
  data.val_files=${VAL} \
  data.train_batch_size=16 \
  data.max_prompt_length=8192 \
  data.max_response_length=4096 \
  data.filter_overlong_prompts=False \
  actor_rollout_ref.model.path=${MODEL} \
  actor_rollout_ref.actor.strategy=fsdp \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.actor.ppo_mini_batch_size=16 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1 \
  actor_rollout_ref.actor.clip_ratio=0.2 \
  actor_rollout_ref.actor.entropy_coeff=0.001 \
  actor_rollout_ref.actor.grad_clip=1.0 \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.n=2 \
  actor_rollout_ref.rollout.temperature=0.7 \
  actor_rollout_ref.rollout.top_p=0.95 \
  actor_rollout_ref.rollout.prompt_length=8192 \
  actor_rollout_ref.rollout.response_length=4096 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=2 \
  actor_rollout_ref.rollout.gpu_memory_utilization=0.5 \
  actor_rollout_ref.rollout.agent.default_agent_loop=vmtr_video_mtr \
  actor_rollout_ref.rollout.agent.agent_loop_config_path=${HERE}/agent_loop.yaml \
  +actor_rollout_ref.rollout.agent.agent_loop_manager_class=vmtr.integrations.verl.agent_loop.VideoMTRAgentLoopManager \
  critic.model.path=${MODEL} \
  critic.optim.lr=1e-5 \
  critic.ppo_micro_batch_size_per_gpu=1 \
  reward.reward_manager.source=importlib \
  reward.reward_manager.name=VideoMTRRewardManager \
  reward.reward_manager.module.path=pkg://vmtr.integrations.verl.reward_manager \
  +reward.reward_kwargs.vmtr.variant=code \
  trainer.n_gpus_per_node=8 \
  trainer.nnodes=1 \
  trainer.total_training_steps=500 \
  trainer.save_freq=50 \
  trainer.test_freq=50 \
  trainer.project_name=vmtr \
  trainer.experiment_name=video_mtr_qwen2_5_vl_7b \
  +ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=vmtr.integrations.verl \
  "$@"
