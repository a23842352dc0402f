"""The embedded default world: fictional people, a crawl about them with planted dirt, ground truth.

people.py builds the knowledge base and question bank, pages.py renders HTML
pages, dirt.py plants what a real crawl carries, warc.py writes WARC shards.
stages/world.py puts them together.
"""
