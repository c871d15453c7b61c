"""LangGraph integration (the ``[langgraph]`` extra): a checkpointer over a threadline store.

>>> from threadline.langgraph import ThreadlineSaver
>>> with ThreadlineSaver.from_url("sqlite:///threadline.db") as saver:  # doctest: +SKIP
...     graph = builder.compile(checkpointer=saver)

See docs/langgraph.md for the mapping, the serialization allowlist and the options.
"""

from threadline.langgraph.saver import NS_SEP, ThreadlineSaver, thread_key
from threadline.langgraph.types import register_langgraph_types

__all__ = ["NS_SEP", "ThreadlineSaver", "register_langgraph_types", "thread_key"]
