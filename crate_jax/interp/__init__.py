"""Neuron-level interpretability, as OpenAI's neuron_explainer separates it:

- `activations/`: what the neurons do (capture on held-out text, top/random/quantile records,
  sparsity);
- `explanations/`: what they are said to do (explainers and simulators, which records explain
  and which score, correlation scores);
- here: the `interp` stage (`evaluate`), the fingerprint of its inputs (`freshness`), the planted
  corpus's ground truth and the per-run summary (`run_summary`).
"""
