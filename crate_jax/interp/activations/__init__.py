"""What the neurons do: capture their activations on held-out text, mine top, random and
quantile records per neuron (OpenAI neuron-explainer records), and measure sparsity."""
