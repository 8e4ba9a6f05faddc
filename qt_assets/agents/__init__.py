"""Agents: the market regime (regime.py), the guardian's rules, allocation and discipline (guardian.py), LLM and
hybrid agents (llm.py); assets.py turns each configured agent's signals into decisions and guarded targets."""
