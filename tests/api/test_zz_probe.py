import httpx
async def test_probe(app, tenant):
    h = tenant.headers("editor")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as client:
      for p in [{"q": "\x00"}, {"qualified_name": "a\x00"}, {"type": "\x00"}, {"tag": "\x00"}, {"q": "!!! :* & |"}, {"q": "a'b\\"}]:
        r = await client.get("/metadata/search", params=p, headers=h)
        print(p, r.status_code, r.text[:150])
      for b in [{"tenant_id": "acme\x00", "username": "u", "password": "p"}, {"tenant_id": "acme", "username": "u\x00", "password": "p"}, {"tenant_id": "acme", "username": "u", "password": "p\x00"}]:
        r = await client.post("/auth/login", json=b)
        print(b, r.status_code, r.text[:150])
      r = await client.get("/tenants/ac%00me/config", headers=h); print(r.status_code)
      r = await client.get("/auth/validate", headers={"Authorization": "Bearer lily_ac\x01me.a.b"}); print(r.status_code)
