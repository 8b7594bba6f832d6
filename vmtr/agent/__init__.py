"""The agent: turn protocol, graph state and the LangGraph state machine."""
