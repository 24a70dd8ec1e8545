"""Anima (Cosmos-Predict2 DiT + LLM adapter + Qwen-Image VAE): the toy world and ControlNet-LLLite for it."""
