"""Text pools for pages that are not about people: articles, ads, spam, other languages."""

ARTICLE_TOPICS = {
    "Gardening in small spaces": [
        "A balcony can hold far more plants than most people expect.",
        "Start with herbs such as basil, thyme and mint, which forgive the odd missed watering.",
        "Containers need drainage holes, otherwise the roots sit in water and rot.",
        "Morning sun is gentler than afternoon sun for most leafy vegetables.",
        "A cheap moisture meter takes the guesswork out of watering.",
        "Climbing beans make use of vertical space and grow quickly in summer.",
        "Compost from kitchen scraps can feed a surprising number of pots.",
        "Rotate the pots every few weeks so that every side gets its share of light.",
        "In autumn, bring tender plants indoors before the first frost arrives.",
        "Keep a small notebook of what worked, because every balcony is different.",
    ],
    "Planning a cycling holiday": [
        "A good cycling holiday begins with an honest look at how far you like to ride each day.",
        "Most riders are happiest with fifty to seventy kilometres and time to stop for lunch.",
        "Quiet country roads are often only a short detour from the busy main routes.",
        "Pack a spare tube, a small pump and a multitool, and learn to use them before you leave.",
        "Panniers keep the weight low on the bike, which makes steering easier.",
        "Book the first night in advance so that the trip starts without stress.",
        "Trains in many countries carry bicycles, which opens up one-way routes.",
        "Eat before you are hungry and drink before you are thirsty.",
        "A light rain jacket is worth its weight on any tour, whatever the forecast says.",
        "Leave one rest day in the plan, because legs and weather both need slack.",
    ],
    "Cooking a weeknight soup": [
        "A pot of soup is one of the fastest ways to turn leftovers into dinner.",
        "Begin by softening onions, carrots and celery slowly in a little oil.",
        "Add garlic only for the last minute so that it does not burn.",
        "Stock made from vegetable peelings costs almost nothing and tastes better than water.",
        "Lentils cook in about twenty minutes and make the soup filling.",
        "A squeeze of lemon at the end brightens the whole pot.",
        "Season in stages, tasting as you go, rather than all at once.",
        "Soup usually tastes better the next day, once the flavours have settled.",
        "Freeze portions in flat bags so that they thaw quickly.",
        "Serve it with good bread and nobody will ask what went into it.",
    ],
    "Choosing a second-hand book": [
        "Second-hand bookshops reward patience more than any other kind of shop.",
        "Check the spine first, because a cracked spine often means loose pages.",
        "Pencil notes in the margins can make a used book more interesting, not less.",
        "Older editions sometimes include introductions that later printings dropped.",
        "A slight smell of dust is normal, but a musty smell can mean damp damage.",
        "Ask the bookseller what came in this week, since the best books rarely reach the shelves.",
        "Many shops will trade books, which keeps a reading habit affordable.",
        "Keep a list of authors you are hunting so that you can scan shelves quickly.",
        "Hardbacks with dust jackets hold their value better than paperbacks.",
        "The best finds are often in the boxes under the tables.",
    ],
    "Reading a bus timetable": [
        "Timetables look complicated, but they follow a few simple rules.",
        "Each column is usually one journey, and each row is one stop along the route.",
        "Small letters beside a time point to notes at the bottom of the page.",
        "Weekend and holiday services often run less often than weekday services.",
        "The first and last buses of the day are the ones most worth writing down.",
        "Timing points are the stops where a bus waits if it is running early.",
        "Many routes run every ten minutes in the day and every half hour in the evening.",
        "Check whether the timetable shows departure or arrival times.",
        "Printed timetables at stops are updated less often than the online ones.",
        "When in doubt, ask the driver, who has seen every question before.",
    ],
}

# Reader notes make each article its own: without them two articles on one topic share most
# sentences and are, rightly, near-duplicates.
READER_NOTES = [
    "A reader from {city}, {name}, wrote in to say that this worked for {pron} after {n} attempts.",
    "{name} in {city} suggests keeping a checklist taped to the fridge.",
    "We tried this ourselves over {n} weekends and the results were better than expected.",
    "In {city} the local council runs a free workshop on this every {weekday}.",
    "One of our editors, {name}, swears by doing it first thing on a {weekday} morning.",
    "According to a survey of {n} readers, most people give up too early.",
    "{name} from {city} points out that patience matters more than equipment.",
    "A shop in {city} told us that questions about this have doubled since last year.",
    "Our notes from {city} show that {n} minutes a day is enough to see progress.",
    "If you live near {city}, the {weekday} market is a good place to ask for advice.",
    "{name} reminded us that the first attempt is rarely the best one.",
    "After {n} letters on the subject, we decided to update this guide.",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

AD_TEXT = [
    "MEGA SUMMER SALE! Up to 70% off everything in store, this weekend only.",
    "Shop the best deals on shoes, jackets and accessories before they are gone.",
    "Free shipping on all orders over 30 dollars. Use code SUMMER70 at checkout.",
    "Thousands of happy customers cannot be wrong. Order now and save big!",
    "Hurry, limited stock available. Offer ends Sunday at midnight.",
]

SPAM_KEYWORDS = ["cheap flights", "best price", "buy now", "discount viagra", "free casino bonus",
                 "online loans", "cheap watches", "weight loss pills", "crypto profits", "replica bags"]
SYMBOLS = "#@$%^&*~|+=<>{}[]/\\"
SHORT_TEXTS = ["Page moved.", "Click here to continue.", "Error 404.", "Loading...", "Coming soon!",
               "Access denied."]
REPEATED_LINES = ["Subscribe to our channel for more videos!", "Sign in to see the full content.",
                  "Best deals of the day updated hourly.", "Share this post with your friends!"]

FOREIGN = {
    "de": [
        "Die Stadtverwaltung hat am Montag neue Pläne für den Ausbau der Radwege vorgestellt.",
        "Nach Angaben der Behörde sollen die Arbeiten im kommenden Frühjahr beginnen und zwei Jahre dauern.",
        "Viele Anwohner begrüßen das Vorhaben, andere befürchten jedoch weniger Parkplätze in ihrer Straße.",
        "Der Wochenmarkt auf dem Rathausplatz findet ab sofort auch am Samstagnachmittag statt.",
        "Die Bibliothek verlängert ihre Öffnungszeiten und bietet nun auch Lesungen für Kinder an.",
        "Im Sommer lädt das Museum zu einer Ausstellung über die Geschichte der Schifffahrt ein.",
        "Die Wettervorhersage kündigt für das Wochenende sonnige Abschnitte und milde Temperaturen an.",
        "Der örtliche Sportverein sucht ehrenamtliche Trainerinnen und Trainer für die Jugendmannschaften.",
        "Zahlreiche Besucher kamen zum Stadtfest, das in diesem Jahr sein fünfzigjähriges Bestehen feierte.",
        "Die Bauarbeiten an der alten Brücke werden voraussichtlich bis zum Herbst abgeschlossen sein.",
    ],
    "fr": [
        "La municipalité a présenté lundi un nouveau projet pour développer les pistes cyclables du centre.",
        "Selon la mairie, les travaux devraient commencer au printemps prochain et durer deux ans.",
        "De nombreux habitants saluent cette initiative, mais certains craignent la disparition de places de stationnement.",
        "Le marché hebdomadaire de la place de la mairie aura désormais lieu aussi le samedi après-midi.",
        "La bibliothèque prolonge ses horaires et propose maintenant des lectures pour les enfants.",
        "Cet été, le musée accueille une exposition consacrée à l'histoire de la navigation.",
        "La météo annonce des éclaircies et des températures douces pour tout le week-end.",
        "Le club sportif local recherche des entraîneurs bénévoles pour ses équipes de jeunes.",
        "Des milliers de visiteurs sont venus à la fête de la ville, qui célébrait cette année son cinquantième anniversaire.",
        "Les travaux sur le vieux pont devraient être terminés avant la fin de l'automne.",
    ],
    "es": [
        "El ayuntamiento presentó el lunes un nuevo plan para ampliar los carriles para bicicletas del centro.",
        "Según las autoridades, las obras comenzarán la próxima primavera y durarán dos años.",
        "Muchos vecinos celebran el proyecto, aunque otros temen perder plazas de aparcamiento en su calle.",
        "El mercado semanal de la plaza mayor abrirá a partir de ahora también los sábados por la tarde.",
        "La biblioteca amplía su horario y ahora ofrece lecturas para niños todos los miércoles.",
        "Este verano el museo acoge una exposición sobre la historia de la navegación.",
        "El pronóstico del tiempo anuncia intervalos soleados y temperaturas suaves para el fin de semana.",
        "El club deportivo local busca entrenadores voluntarios para sus equipos juveniles.",
        "Miles de visitantes acudieron a las fiestas de la ciudad, que este año cumplían cincuenta años.",
        "Las obras del puente antiguo terminarán, previsiblemente, antes de que acabe el otoño.",
    ],
    "zh": [
        "市政府周一公布了扩建市中心自行车道的新计划。",
        "据有关部门介绍，工程将于明年春天开工，预计持续两年。",
        "许多居民对这一计划表示欢迎，但也有人担心街道上的停车位会减少。",
        "市政厅广场的每周集市从现在起在星期六下午也会开放。",
        "图书馆延长了开放时间，并且每周三为儿童举办读书活动。",
        "今年夏天，博物馆将举办一场关于航海历史的展览。",
        "天气预报显示，本周末将以晴到多云为主，气温比较温和。",
        "当地体育俱乐部正在为青少年球队招募志愿教练。",
        "今年的城市节庆迎来了成千上万的游客，庆祝活动已经举办了五十年。",
        "老桥的维修工程预计将在秋季结束之前完成。",
    ],
}
