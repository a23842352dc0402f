"""The embedded default world: fictional people, a crawl about them with planted dirt, ground truth.

people.py builds the knowledge base and question bank from vocab.py's name and
value pools, pages.py renders HTML pages, crawl.py makes every page of the crawl
(good ones and the dirt a real crawl carries, texts.py's articles, ads and spam
among them), warc.py writes WARC shards. stages/world.py puts them together.
"""
