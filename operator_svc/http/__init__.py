"""The official UID2 HTTP API (reference §8) as a second front door to the same `Operator`:
`app.HttpFrontDoor` serves it on its own asyncio loop beside the gRPC server."""
