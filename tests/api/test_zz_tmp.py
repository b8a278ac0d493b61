import time
async def test_a(client): pass
async def test_b(client): pass
async def test_c(client): pass
def test_d(database_url): pass
def test_e(database_url): pass
