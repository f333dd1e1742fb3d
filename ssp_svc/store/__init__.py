"""The SSP's stores: credentials it issued (publishers and bid-stream subscribers)."""
