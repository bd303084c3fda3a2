"""Memo phrases in each account's language: laundering cover stories and honest look-alikes' words.

The text signal of laundering is meant to be subtle and local. A cover story reads like ordinary
business (a consulting fee, a loan repaid, goods delivered "as agreed"), honest customers use the
same words now and then, and the honest look-alikes of fedlake.synth.laundering write their own
memos (daily takings, a purchase price held by a notary, a transfer to their own account) that
share words with the cover stories. All of it is written in the language of the account's
country: an EU account in Germany writes German, one in Spain Spanish, Singapore a mix of
English, Malay and pinyin. A model learns the words of a language only from silos that hold it.

Plain ASCII, like the rest of the vocabulary.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedlake.synth import vocabulary as vocab
from fedlake.synth.laundering import STYLE_COVER, STYLE_HEAD, STYLE_OF_LOOKALIKE, LOOKALIKES

LANGUAGE_OF_COUNTRY = {
    "DE": "de", "AT": "de", "FR": "fr", "BE": "fr", "LU": "fr", "NL": "nl", "ES": "es", "IT": "it",
    "US": "en_us", "SG": "en_sg",
}
FALLBACK_LANGUAGE = "en_us"

COVER_STORIES: dict[str, tuple[str, ...]] = {
    "de": ("Beratungshonorar", "Honorar Beratung Projekt", "Provision Vermittlung", "Darlehen Rueckzahlung",
           "Rueckzahlung privat", "Warenlieferung lt. Vereinbarung", "Vorschuss Projekt", "Dienstleistung lt. Vertrag"),
    "fr": ("honoraires conseil", "honoraires prestation projet", "commission apport affaires", "remboursement pret",
           "remboursement prive", "livraison marchandises selon accord", "avance projet", "prestation selon contrat"),
    "nl": ("adviesvergoeding", "honorarium advies project", "bemiddelingsprovisie", "aflossing lening",
           "terugbetaling prive", "levering goederen volgens afspraak", "voorschot project", "diensten volgens contract"),
    "es": ("honorarios consultoria", "honorarios servicios proyecto", "comision intermediacion", "devolucion prestamo",
           "devolucion particular", "entrega mercancia segun acuerdo", "anticipo proyecto", "servicios segun contrato"),
    "it": ("compenso consulenza", "parcella servizi progetto", "provvigione intermediazione", "restituzione prestito",
           "restituzione privata", "fornitura merce come da accordo", "anticipo progetto", "servizi come da contratto"),
    "en_us": ("consulting fee", "advisory services project", "finder's fee", "loan repayment", "personal loan payback",
              "goods shipment per agreement", "project advance", "services per contract"),
    "en_sg": ("agency fee", "consultancy fee proj", "yong jin", "pinjaman balik", "loan return pte",
              "huo kuan as agreed", "project deposit", "service as per agreement"),
}

LOOKALIKE_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "cash_business": {
        "de": ("Tageseinnahmen", "Einnahmen Kasse", "Kasse Filiale", "Einzahlung Tageskasse", "Umsatz Laden"),
        "fr": ("recette du jour", "recettes caisse", "versement caisse magasin", "depot recette", "chiffre affaires boutique"),
        "nl": ("dagontvangst", "kasontvangsten", "storting kassa winkel", "omzet winkel", "storting dagkas"),
        "es": ("recaudacion del dia", "ingresos caja", "ingreso caja tienda", "ventas del dia", "deposito recaudacion"),
        "it": ("incasso giornaliero", "versamento incassi", "versamento cassa negozio", "incasso del giorno",
               "corrispettivi giornalieri"),
        "en_us": ("daily receipts", "store deposit", "register cash deposit", "business takings", "night deposit"),
        "en_sg": ("shop collection", "daily sales kopitiam", "hawker stall takings", "deposit sales", "kedai jualan harian"),
    },
    "property_escrow": {
        "de": ("Kaufpreis Wohnung", "Notaranderkonto", "Kaufpreis lt. Vertrag", "Erbschaft Auszahlung", "Grundstueck Anzahlung"),
        "fr": ("prix de vente appartement", "compte sequestre notaire", "prix selon contrat", "succession versement",
               "acompte terrain"),
        "nl": ("koopsom woning", "derdengeldrekening notaris", "koopsom volgens contract", "erfenis uitkering", "aanbetaling grond"),
        "es": ("precio compraventa piso", "cuenta deposito notario", "precio segun contrato", "herencia pago", "senal terreno"),
        "it": ("prezzo compravendita appartamento", "deposito notaio", "prezzo come da contratto", "eredita liquidazione",
               "caparra terreno"),
        "en_us": ("closing proceeds", "title company escrow", "purchase price per contract", "estate distribution",
                  "earnest money land"),
        "en_sg": ("HDB resale proceeds", "conveyancing lawyer", "purchase price as per OTP", "estate payout", "option fee condo"),
    },
    "own_accounts_ring": {
        "de": ("Uebertrag eigenes Konto", "Umbuchung Sparen", "eigene Ueberweisung", "Rueckzahlung eigenes Konto"),
        "fr": ("virement compte propre", "transfert epargne", "virement interne perso", "remboursement compte propre"),
        "nl": ("overboeking eigen rekening", "naar spaarrekening", "eigen overboeking", "terugbetaling eigen rekening"),
        "es": ("traspaso cuenta propia", "traspaso ahorro", "transferencia propia", "devolucion cuenta propia"),
        "it": ("giroconto", "giroconto risparmio", "bonifico a me stesso", "restituzione giroconto"),
        "en_us": ("transfer to own account", "move to savings", "self transfer", "own account repayment"),
        "en_sg": ("own acct transfer", "transfer to own savings", "self transfer FAST", "pindah akaun sendiri"),
    },
}

LANGUAGES = tuple(COVER_STORIES)


def _table() -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Every phrase in one array; start and length per (style, language)."""
    by_style = {STYLE_COVER: COVER_STORIES}
    for name, code in LOOKALIKES.items():
        by_style[STYLE_OF_LOOKALIKE[code]] = LOOKALIKE_WORDS[name]
    styles = max(by_style) + 1
    start = np.zeros((styles, len(LANGUAGES)), dtype=np.int64)
    length = np.zeros_like(start)
    phrases: list[str] = []
    for style, table in by_style.items():
        for i, language in enumerate(LANGUAGES):
            start[style, i], length[style, i] = len(phrases), len(table[language])
            phrases.extend(table[language])
    return pa.array(phrases, pa.string()), start, length


_PHRASES, _START, _LENGTH = _table()
_LANGUAGE_INDEX = np.array(
    [LANGUAGES.index(LANGUAGE_OF_COUNTRY.get(c, FALLBACK_LANGUAGE)) for c in vocab.COUNTRIES], dtype=np.int64
)


def language_of(country: np.ndarray) -> np.ndarray:
    """Index into LANGUAGES of each account's language, from its country (index into vocabulary.COUNTRIES)."""
    return _LANGUAGE_INDEX[np.asarray(country, dtype=np.int64)]


def phrases(rng: np.random.Generator, styles: np.ndarray, country: np.ndarray) -> pa.Array:
    """The phrase each memo opens with, in its account's language; null where the memo keeps its
    ordinary head (STYLE_HEAD)."""
    styles = np.asarray(styles, dtype=np.int64)
    language = language_of(country)
    special = styles != STYLE_HEAD
    which = np.where(special, styles, STYLE_COVER)
    index = _START[which, language] + rng.integers(0, 1 << 30, len(styles)) % _LENGTH[which, language]
    return pc.if_else(pa.array(special), pc.take(_PHRASES, pa.array(index)), pa.scalar(None, pa.string()))
