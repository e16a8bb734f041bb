"""What the neurons are said to do: explainers and simulators (offline token lookup or any
OpenAI-compatible LLM), which records explain and which score, and the correlation scores."""
