"""The ``mysql`` crawler (:mod:`.plugin`, :mod:`.crawl`)."""
