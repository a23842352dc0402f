"""Value pools the world draws from. All organisations are fictional; cities are real places."""

# (first name, pronoun) — pronouns drive follow-up questions such as "And where did she study?"
FIRST_NAMES = [
    ("Ada", "she"), ("Alma", "she"), ("Anouk", "she"), ("Beatrix", "she"), ("Calla", "she"),
    ("Cressida", "she"), ("Dagny", "she"), ("Delphine", "she"), ("Edda", "she"), ("Elowen", "she"),
    ("Esme", "she"), ("Fenna", "she"), ("Greta", "she"), ("Hedda", "she"), ("Ilse", "she"),
    ("Imogen", "she"), ("Iris", "she"), ("Juno", "she"), ("Kaia", "she"), ("Liesel", "she"),
    ("Linnea", "she"), ("Maren", "she"), ("Marisol", "she"), ("Nadia", "she"), ("Noor", "she"),
    ("Odile", "she"), ("Orla", "she"), ("Petra", "she"), ("Quilla", "she"), ("Rhea", "she"),
    ("Rosalind", "she"), ("Saoirse", "she"), ("Sigrid", "she"), ("Solveig", "she"), ("Tamsin", "she"),
    ("Thea", "she"), ("Ursula", "she"), ("Vesna", "she"), ("Wilhelmina", "she"), ("Yara", "she"),
    ("Zelda", "she"), ("Zinnia", "she"), ("Aurelie", "she"), ("Briony", "she"), ("Clementine", "she"),
    ("Anselm", "he"), ("Barnaby", "he"), ("Caspian", "he"), ("Cormac", "he"), ("Dashiell", "he"),
    ("Desmond", "he"), ("Emrys", "he"), ("Evander", "he"), ("Fintan", "he"), ("Gideon", "he"),
    ("Hollis", "he"), ("Ignatius", "he"), ("Ivo", "he"), ("Jasper", "he"), ("Kasimir", "he"),
    ("Leander", "he"), ("Lorcan", "he"), ("Magnus", "he"), ("Matthias", "he"), ("Nico", "he"),
    ("Oberon", "he"), ("Osric", "he"), ("Peregrine", "he"), ("Quentin", "he"), ("Rafferty", "he"),
    ("Rune", "he"), ("Silas", "he"), ("Soren", "he"), ("Tobias", "he"), ("Torin", "he"),
    ("Ulric", "he"), ("Valentin", "he"), ("Wendell", "he"), ("Xavier", "he"), ("Yannick", "he"),
    ("Zoltan", "he"), ("Alaric", "he"), ("Bastian", "he"), ("Cyprian", "he"), ("Ewald", "he"),
]

SURNAMES = [
    "Abernethy", "Ashcombe", "Balfour", "Blackwood", "Brackenridge", "Calloway", "Carrow", "Castellan",
    "Dunmore", "Dravenport", "Elderfield", "Everly", "Fairweather", "Falkner", "Garrowby", "Greywell",
    "Halloran", "Harrowgate", "Holloway", "Ingleby", "Jessamine", "Kettering", "Kilbride", "Larkspur",
    "Lockridge", "Marchbanks", "Merriweather", "Morrow", "Northcote", "Nightingale", "Oakhurst", "Ormsby",
    "Pemberton", "Penhallow", "Quarrington", "Ravensworth", "Redfern", "Rookwood", "Saltmarsh", "Selwood",
    "Sheringham", "Southerly", "Thistlewood", "Thornbury", "Treharne", "Underhill", "Vantreight", "Varley",
    "Wexcombe", "Whitlock", "Winterbourne", "Wrenfield", "Yardley", "Zanetti", "Achterberg", "Brennicke",
    "Castellanos", "Delacroix", "Eskildsen", "Falkenrath", "Gallardo", "Haverkamp", "Iturbide", "Jaroszewski",
    "Kaltenbach", "Lindqvist", "Moravec", "Nakashima", "Okonkwo", "Pellegrini", "Quintanilla", "Rautenberg",
    "Szymanski", "Tanaka-Hale", "Uhlenbrock", "Valderrama", "Wojcik", "Xenakis", "Yamamura", "Zelenko",
]

# Each surname with those that begin it or that it begins ("Castellan", "Castellanos"), itself included: a
# page naming "Kasimir Castellanos" also names "Kasimir Castellan", so two such names are never two people
# of the world (people.apart), nor an article's reader and a person (crawl.article_page).
SURNAME_VARIANTS = {s: [t for t in SURNAMES if t.startswith(s) or s.startswith(t)] for s in SURNAMES}


def name_variants(first: str, last: str) -> list[str]:
    """The full names that a page naming `first last` also names, or that name it: itself included."""
    return [f"{first} {v}" for v in SURNAME_VARIANTS.get(last, [last])]


def surnames_from(last: str) -> list[str]:
    """Every surname, from `last` on and round: where a name that may not be used moves on to, so that
    no random number is drawn again."""
    at = SURNAMES.index(last)
    return SURNAMES[at:] + SURNAMES[:at]

CITIES = [
    "Lisbon", "Osaka", "Montreal", "Valparaiso", "Tbilisi", "Krakow", "Porto", "Adelaide", "Nairobi",
    "Ljubljana", "Bergen", "Cork", "Ghent", "Tallinn", "Quebec City", "Hobart", "Salzburg", "Bologna",
    "Seville", "Antwerp", "Gdansk", "Aarhus", "Edinburgh", "Halifax", "Wellington", "Cusco", "Kyoto",
    "Trieste", "Tromso", "Bruges", "Galway", "Marseille", "Lyon", "Utrecht", "Graz", "Brno", "Vilnius",
    "Riga", "Turku", "Uppsala", "Leipzig", "Dresden", "Innsbruck", "Basel", "Lausanne", "Granada",
    "Valencia", "Bilbao", "Coimbra", "Naples", "Palermo", "Thessaloniki", "Plovdiv", "Cluj", "Sarajevo",
    "Dunedin", "Perth", "Victoria", "Savannah", "Asheville",
]

UNIVERSITIES = [
    "Halvern University", "the University of Eastmoor", "Brightwater Institute of Technology",
    "Kestrel Bay University", "the University of Ardmore", "Linden Hall College", "Westmarch University",
    "the Royal Institute of Calder", "Stonebridge University", "Amberly College", "the University of Norfell",
    "Greywater Polytechnic", "Marrowind University", "the University of Solent Vale", "Harrow Peak Institute",
    "Thornfield University", "Corrin Academy of Sciences", "the University of Bellmoor", "Ravenscar College",
    "Ellesmere University", "Ostrava Technical Institute", "Whitcombe University", "the University of Lowmarsh",
    "Pinecrest College", "Aldermoor University", "Fenwick Institute of Design", "Glenhaven University",
    "the University of Tarrow", "Highcliff Institute", "Vesper College",
]

MAJORS = [
    "marine biology", "computer science", "economics", "civil engineering", "philosophy", "chemistry",
    "art history", "mechanical engineering", "linguistics", "statistics", "architecture", "astrophysics",
    "political science", "molecular biology", "music composition", "geology", "anthropology",
    "industrial design", "materials science", "public health", "mathematics", "journalism",
    "environmental science", "psychology", "classics", "electrical engineering", "urban planning",
    "neuroscience", "agricultural science", "film studies",
]

# fictional employers, each headquartered in one city (so "employer's city" stays consistent)
COMPANIES = [
    ("Quillon Systems", "Toronto"), ("Marrow & Finch", "Dublin"), ("Bluefen Analytics", "Copenhagen"),
    ("Orrin Biotech", "Basel"), ("Halcyon Freight", "Rotterdam"), ("Tessellate Labs", "Helsinki"),
    ("Northwind Robotics", "Oslo"), ("Cinderfall Games", "Melbourne"), ("Larkmere Energy", "Aberdeen"),
    ("Saltgrass Foods", "Auckland"), ("Verdigris Architects", "Barcelona"), ("Kettle Point Media", "Chicago"),
    ("Amberline Aerospace", "Toulouse"), ("Brightloom Textiles", "Milan"), ("Corvid Security", "Tel Aviv"),
    ("Ironbark Mining", "Perth"), ("Lumenfield Optics", "Jena"), ("Mistral Shipping", "Genoa"),
    ("Palisade Insurance", "Zurich"), ("Redwater Pharmaceuticals", "Cambridge"), ("Sable Finance", "Frankfurt"),
    ("Tidewater Consulting", "Boston"), ("Umbra Software", "Tallinn"), ("Vantage Rail", "Vienna"),
    ("Willowmere Publishing", "Edinburgh"), ("Yellowpine Forestry", "Vancouver"), ("Zephyr Wind Power", "Aarhus"),
    ("Granite Peak Capital", "Denver"), ("Foxglove Health", "Manchester"), ("Ember & Oak Studios", "Montreal"),
    ("Starling Telecom", "Stockholm"), ("Kelpie Marine", "Hobart"), ("Obsidian Chips", "Eindhoven"),
    ("Pebblebrook Schools", "Leeds"), ("Juniper Logistics", "Hamburg"), ("Driftwood Hotels", "Lisbon"),
    ("Gossamer Fashion", "Paris"), ("Heron Water", "Utrecht"), ("Ironwood Instruments", "Munich"),
    ("Lattice Quantum", "Waterloo"),
]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

# sites that carry person pages, by the kind of page they host
NEWS_SITES = ["northgate-herald.com", "the-lantern-post.com", "riverside-chronicle.net", "daily-meridian.org",
              "weekly-almanac.com", "harbourtimes.net"]
DIRECTORY_SITES = ["peoplepedia.org", "whoiswho-directory.net", "profiles-atlas.com"]
BLOG_SITES = ["quietdesk-blog.com", "longform-notes.net", "thecuriousreader.org", "fieldnotes-journal.com"]
EVENT_SITES = ["summit-speakers.org", "conference-hub.net", "talks-and-panels.com"]
SYNDICATION_SITES = ["newsmirror-aggregator.com", "feedreader-archive.net", "topstories-digest.com"]
QUIZ_SITES = ["triviabase.net", "pubquiz-answers.com", "quizmaster-archive.org"]
AD_SITES = ["deals-today-now.com", "bestprice-hub.net", "shopping-planet-offers.com", "mega-discount-zone.com"]
ARTICLE_SITES = ["homeandgarden-weekly.com", "travelwise-notes.net", "kitchen-table-recipes.org",
                 "citycycling-guide.com", "bookshelf-review.net"]
