"""The storage conformance suite, shipped so that any backend can prove itself.

Subclass :class:`StoreConformance` in a test module and provide a ``store_factory``
fixture; pytest then runs every contract test against your backend::

    from threadline.testing import StoreConformance, StoreFactory

    class TestMyBackend(StoreConformance):
        @pytest.fixture
        def store_factory(self, tmp_path):
            with StoreFactory(lambda n: f"mydb:///{tmp_path}/s{n}") as factory:
                yield factory

Needs pytest (it is imported only when this package is).
"""

from threadline.testing.conformance import PartCounts, StoreConformance, StoreFactory

__all__ = ["PartCounts", "StoreConformance", "StoreFactory"]
