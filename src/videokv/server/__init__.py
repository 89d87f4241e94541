"""The HTTP service: sessions over live streams, answers streamed as server-sent events, a web page."""
