"""HTTP/JSON front ends of the server (aiohttp): Wacht JSON, OpenAI, Perspective, console."""
