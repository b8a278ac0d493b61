"""The ``postgres`` crawler (:mod:`.plugin`, :mod:`.crawl`)."""
