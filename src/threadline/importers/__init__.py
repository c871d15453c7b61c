"""Importers of other checkpoint stores into threadline (``threadline import``).

:func:`import_langgraph` reads LangGraph's SqliteSaver and PostgresSaver databases.
"""

from threadline.importers.langgraph import ImportReport, Opaque, Problem, import_langgraph

__all__ = ["ImportReport", "Opaque", "Problem", "import_langgraph"]
