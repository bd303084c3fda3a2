"""The words of the demo bank: countries, names, merchants, memo phrases, loan purposes.

Kept apart from the generator so that the realism of the data (what a memo or a name looks like)
can be read and extended without touching the sampling logic. Every list is plain ASCII so that
derived strings (emails) need no transliteration.
"""

from __future__ import annotations

REGIONS = ("EU", "US", "SG")
REGION_CURRENCY = {"EU": "EUR", "US": "USD", "SG": "SGD"}

# The 27 member states: a payment between two of them is domestic for the EU region.
EU_MEMBER_STATES = (
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU",
    "IE", "IT", "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
)

# Where EU-homed customers live, with weights; each has its own national id, phone and postcode.
EU_HOME_COUNTRIES = ("DE", "FR", "NL", "ES", "IT")
EU_HOME_WEIGHTS = (0.30, 0.25, 0.15, 0.15, 0.15)

# Counterparty countries outside each region, for cross-border payments.
FOREIGN_COUNTRIES = {
    "EU": ("US", "GB", "CH", "SG", "AE", "HK", "TR", "CN", "NO", "KY", "PA", "RS"),
    "US": ("CA", "MX", "GB", "DE", "FR", "CN", "JP", "KY", "PA", "BS", "SG", "BR"),
    "SG": ("MY", "ID", "TH", "CN", "HK", "AU", "IN", "US", "GB", "PH", "VN", "AE"),
}

# Every country code that may appear anywhere, so columns can be built by index.
COUNTRIES = tuple(
    sorted(set(EU_MEMBER_STATES) | {"US", "SG"} | {c for cs in FOREIGN_COUNTRIES.values() for c in cs})
)

FIRST_NAMES = {
    "DE": ("Lukas", "Anna", "Jonas", "Lea", "Felix", "Laura", "Maximilian", "Sophie", "Paul", "Marie",
           "Leon", "Hannah", "Tim", "Julia", "Niklas", "Katharina", "Stefan", "Sabine", "Jan", "Petra"),
    "FR": ("Lucas", "Emma", "Hugo", "Chloe", "Louis", "Manon", "Gabriel", "Camille", "Arthur", "Ines",
           "Jules", "Lea", "Nathan", "Sarah", "Thomas", "Julie", "Nicolas", "Claire", "Antoine", "Marion"),
    "NL": ("Daan", "Emma", "Sem", "Julia", "Lucas", "Tess", "Finn", "Sanne", "Bram", "Lotte",
           "Jesse", "Anouk", "Thijs", "Fleur", "Ruben", "Eva", "Sven", "Iris", "Joris", "Femke"),
    "ES": ("Hugo", "Lucia", "Mateo", "Sofia", "Pablo", "Martina", "Alvaro", "Paula", "Diego", "Carmen",
           "Javier", "Elena", "Sergio", "Laura", "Adrian", "Marta", "Carlos", "Ana", "Daniel", "Irene"),
    "IT": ("Leonardo", "Giulia", "Francesco", "Sofia", "Alessandro", "Aurora", "Lorenzo", "Ginevra",
           "Matteo", "Chiara", "Andrea", "Francesca", "Marco", "Elena", "Luca", "Sara", "Davide", "Alice",
           "Riccardo", "Martina"),
    "US": ("James", "Olivia", "Michael", "Emma", "William", "Ava", "David", "Sophia", "John", "Isabella",
           "Robert", "Mia", "Daniel", "Emily", "Matthew", "Abigail", "Joseph", "Madison", "Chris", "Ashley"),
    "SG": ("Wei Ming", "Hui Min", "Jun Jie", "Xin Yi", "Zhi Hao", "Mei Ling", "Muhammad", "Nur Aisyah",
           "Arjun", "Priya", "Kai Wen", "Jia Hui", "Ravi", "Siti", "Ethan", "Chloe", "Ahmad", "Kavitha",
           "Jia Le", "Shu Fen"),
}

LAST_NAMES = {
    "DE": ("Mueller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz",
           "Hoffmann", "Koch", "Richter", "Klein", "Wolf", "Neumann", "Schwarz", "Braun", "Zimmermann",
           "Krueger", "Hartmann"),
    "FR": ("Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
           "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
           "Vincent", "Fournier"),
    "NL": ("de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk", "Bakker", "Janssen", "Visser",
           "Smit", "Meijer", "de Boer", "Mulder", "de Groot", "Bos", "Vos", "Peters", "Hendriks",
           "van Leeuwen", "Dekker", "Brouwer"),
    "ES": ("Garcia", "Rodriguez", "Gonzalez", "Fernandez", "Lopez", "Martinez", "Sanchez", "Perez",
           "Gomez", "Martin", "Jimenez", "Ruiz", "Hernandez", "Diaz", "Moreno", "Alvarez", "Romero",
           "Navarro", "Torres", "Dominguez"),
    "IT": ("Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano", "Colombo", "Ricci", "Marino",
           "Greco", "Bruno", "Gallo", "Conti", "De Luca", "Mancini", "Costa", "Giordano", "Rizzo",
           "Lombardi", "Moretti"),
    "US": ("Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson",
           "Taylor", "Thomas", "Moore", "Jackson", "Martin", "Lee", "Thompson", "White", "Harris",
           "Clark", "Lewis"),
    "SG": ("Tan", "Lim", "Lee", "Ng", "Ong", "Wong", "Goh", "Chua", "Chan", "Koh", "Teo", "Ang", "Yeo",
           "Tay", "Ho", "Low", "Rahman", "Ismail", "Kumar", "Pillai"),
}

EMAIL_DOMAINS = {
    "DE": ("gmx.de", "web.de", "t-online.de", "gmail.com"),
    "FR": ("orange.fr", "free.fr", "laposte.net", "gmail.com"),
    "NL": ("ziggo.nl", "kpnmail.nl", "gmail.com", "outlook.com"),
    "ES": ("telefonica.net", "gmail.com", "hotmail.es", "yahoo.es"),
    "IT": ("libero.it", "virgilio.it", "gmail.com", "alice.it"),
    "US": ("gmail.com", "yahoo.com", "outlook.com", "icloud.com"),
    "SG": ("gmail.com", "singnet.com.sg", "yahoo.com.sg", "hotmail.com"),
}

# Transaction categories. Debit categories come first; credits after. The string is what lands in
# transactions.merchant_category.
DEBIT_CATEGORIES = (
    "groceries", "restaurants", "travel", "utilities", "rent", "shopping", "health", "entertainment",
    "gambling", "cash_advance", "cash_withdrawal", "transfer",
)
CREDIT_CATEGORIES = ("salary", "transfer", "refund", "cash_deposit")
CATEGORIES = DEBIT_CATEGORIES + tuple(c for c in CREDIT_CATEGORIES if c not in DEBIT_CATEGORIES)
CHANNELS = ("card", "transfer", "cash", "online", "atm")

# Memo heads per category and region: what the bank statement shows. Card categories name the
# merchant (one merchant, one IBAN), the others describe the payment.
MEMO_HEADS: dict[str, dict[str, tuple[str, ...]]] = {
    "groceries": {
        "EU": ("Lidl", "Aldi Sued", "Carrefour Market", "Albert Heijn", "REWE", "Edeka", "Mercadona",
               "Esselunga", "Monoprix", "Tesco groceries", "Jumbo", "Conad"),
        "US": ("Walmart", "Whole Foods", "Trader Joe's", "Kroger", "Costco", "Safeway", "Target groceries",
               "Publix"),
        "SG": ("FairPrice", "Cold Storage", "Giant", "Sheng Siong", "Don Don Donki", "Prime Supermarket"),
    },
    "restaurants": {
        "EU": ("Vapiano", "Pizzeria Roma", "Le Petit Bistro", "Cafe Central", "Starbucks", "McDonald's",
               "Sushi Bar Kyoto", "Wagamama", "Trattoria da Luigi", "Vinoteca"),
        "US": ("Chipotle", "Shake Shack", "Starbucks", "Olive Garden", "Panera Bread", "Sweetgreen",
               "Joe's Diner", "In-N-Out"),
        "SG": ("Din Tai Fung", "Ya Kun Kaya Toast", "Toast Box", "Jumbo Seafood", "Maxwell hawker",
               "Old Chang Kee", "Crystal Jade", "Starbucks"),
    },
    "travel": {
        "EU": ("Lufthansa", "Air France", "KLM", "Ryanair", "easyJet", "Booking.com", "Deutsche Bahn",
               "SNCF", "Trenitalia", "Airbnb", "Iberia"),
        "US": ("Delta", "United Airlines", "American Airlines", "Expedia", "Marriott", "Hilton", "Uber",
               "Airbnb", "Amtrak"),
        "SG": ("Singapore Airlines", "Scoot", "Grab", "Agoda", "Changi Airport", "Jetstar", "Airbnb"),
    },
    "utilities": {
        "EU": ("EDF electricity", "Vattenfall", "E.ON energy", "Enel", "Iberdrola", "Vodafone", "Orange",
               "Telekom", "water board"),
        "US": ("ConEd", "PG&E", "Comcast", "Verizon", "AT&T", "Duke Energy", "water utility"),
        "SG": ("SP Group", "Singtel", "StarHub", "M1", "PUB water"),
    },
    "rent": {
        "EU": ("rent", "Miete", "loyer", "huur", "alquiler", "affitto", "monthly rent"),
        "US": ("rent", "monthly rent", "apartment rent", "HOA dues"),
        "SG": ("rent", "HDB rental", "condo rent", "monthly rent"),
    },
    "shopping": {
        "EU": ("Amazon.de", "Zalando", "IKEA", "H&M", "MediaMarkt", "Decathlon", "Fnac", "bol.com",
               "El Corte Ingles", "Zara"),
        "US": ("Amazon.com", "Target", "Best Buy", "Home Depot", "Macy's", "Apple Store", "Etsy", "Nike"),
        "SG": ("Lazada", "Shopee", "Uniqlo", "Courts", "IKEA Tampines", "Challenger", "Takashimaya"),
    },
    "health": {
        "EU": ("Apotheke", "pharmacie", "farmacia", "DocMorris", "Kruidvat", "dentist", "physio"),
        "US": ("CVS Pharmacy", "Walgreens", "dental care", "urgent care copay", "Rite Aid"),
        "SG": ("Guardian", "Watsons", "polyclinic", "Raffles Medical", "dental clinic"),
    },
    "entertainment": {
        "EU": ("Netflix", "Spotify", "cinema tickets", "Ticketmaster", "Disney+", "PlayStation Store",
               "museum"),
        "US": ("Netflix", "Spotify", "AMC Theatres", "Ticketmaster", "Hulu", "Steam", "HBO Max"),
        "SG": ("Netflix", "Spotify", "Golden Village", "Shaw Theatres", "Sistic", "Steam"),
    },
    "gambling": {
        "EU": ("Bet365", "Unibet", "PokerStars", "Lottoland", "Betway", "Tipico", "Casino Barriere",
               "bwin"),
        "US": ("DraftKings", "FanDuel", "BetMGM", "Caesars Sportsbook", "PokerStars", "Borgata casino"),
        "SG": ("Singapore Pools", "Marina Bay Sands casino", "Resorts World Sentosa", "Bet365",
               "Genting online"),
    },
    "cash_advance": {
        "EU": ("cash advance ATM", "CC cash withdrawal", "credit card cash", "Bargeldauszahlung Kreditkarte"),
        "US": ("cash advance ATM", "CC cash advance", "credit card cash", "casino cage cash advance"),
        "SG": ("cash advance ATM", "CC cash withdrawal", "credit card cash"),
    },
    "cash_withdrawal": {
        "EU": ("ATM withdrawal", "Geldautomat", "retrait DAB", "cash withdrawal"),
        "US": ("ATM withdrawal", "cash withdrawal", "ATM"),
        "SG": ("ATM withdrawal", "NETS ATM", "cash withdrawal"),
    },
    "transfer": {
        "EU": ("transfer", "to savings", "for dinner", "birthday present", "split bill", "holiday share",
               "Ueberweisung", "virement", "thanks", "rent share"),
        "US": ("transfer", "Zelle", "Venmo cashout", "to savings", "split bill", "for dinner", "thanks",
               "birthday"),
        "SG": ("transfer", "PayNow", "FAST transfer", "to savings", "ang bao", "split bill", "thanks"),
    },
    "salary": {
        "EU": ("salary", "Gehalt", "salaire", "salaris", "nomina", "stipendio", "payroll"),
        "US": ("payroll", "salary", "direct deposit payroll", "ADP payroll", "wages"),
        "SG": ("salary", "payroll", "GIRO salary", "wages"),
    },
    "refund": {
        "EU": ("refund Amazon", "Zalando return", "refund", "Erstattung", "remboursement"),
        "US": ("refund", "Amazon refund", "return credit", "Target return"),
        "SG": ("refund", "Shopee refund", "Lazada refund", "return credit"),
    },
    "cash_deposit": {
        "EU": ("cash deposit", "Bareinzahlung", "depot especes", "cash in"),
        "US": ("cash deposit", "branch deposit", "ATM deposit"),
        "SG": ("cash deposit", "ATM cash deposit", "branch deposit"),
    },
}

# The text signal of laundering (cover stories, in each account's language) and the words of the
# honest look-alikes live in fedlake.synth.memos.

LOAN_PURPOSES = (
    "car", "home_improvement", "debt_consolidation", "education", "medical", "business", "wedding",
    "travel",
)
