"""Few-shot completion prompts for translating English on a base model.

A base model (the built-in 270M) does not follow "translate this": it continues a document.
Shown a few English sentences each followed by its translation, it continues the pattern and
writes the translation of the last one. Measured against the zero-shot completion prompt on
bench/data/translation_dev.tsv (chrF, `python bench/translate_prompts.py`): the languages in
WINS are those where the few-shot prompt scored higher; elsewhere the zero-shot prompt stays.

The examples are English, so this applies only when the source is English (or unknown: then
the text is most likely English, the language edged's inbox defaults are written in).
"""

from __future__ import annotations

from typing import Optional

SOURCES = (
    "The shop opens at nine in the morning and closes at six in the evening.",
    "We are sorry, but the concert has been cancelled because of the storm.",
    "The weather was cold and windy all week. On Saturday, the sun finally came out and the whole town "
    "went to the beach.",
)

EXAMPLES: dict[str, tuple[str, str, str]] = {
    "fr": ("Le magasin ouvre à neuf heures du matin et ferme à six heures du soir.",
           "Nous sommes désolés, mais le concert a été annulé à cause de la tempête.",
           "Il a fait froid et venteux toute la semaine. Samedi, le soleil est enfin sorti et toute la ville "
           "est allée à la plage."),
    "de": ("Das Geschäft öffnet um neun Uhr morgens und schließt um sechs Uhr abends.",
           "Es tut uns leid, aber das Konzert wurde wegen des Sturms abgesagt.",
           "Die ganze Woche war es kalt und windig. Am Samstag kam endlich die Sonne heraus, und die ganze "
           "Stadt ging an den Strand."),
    "es": ("La tienda abre a las nueve de la mañana y cierra a las seis de la tarde.",
           "Lo sentimos, pero el concierto se ha cancelado a causa de la tormenta.",
           "Hizo frío y viento toda la semana. El sábado por fin salió el sol y toda la ciudad fue a la playa."),
    "it": ("Il negozio apre alle nove del mattino e chiude alle sei di sera.",
           "Ci dispiace, ma il concerto è stato annullato a causa della tempesta.",
           "Ha fatto freddo e vento per tutta la settimana. Sabato finalmente è uscito il sole e tutta la "
           "città è andata al mare."),
    "pt": ("A loja abre às nove da manhã e fecha às seis da tarde.",
           "Lamentamos, mas o concerto foi cancelado por causa da tempestade.",
           "Esteve frio e vento durante toda a semana. No sábado, o sol finalmente apareceu e a cidade "
           "inteira foi à praia."),
    "nl": ("De winkel gaat om negen uur 's ochtends open en sluit om zes uur 's avonds.",
           "Het spijt ons, maar het concert is afgelast vanwege de storm.",
           "De hele week was het koud en winderig. Op zaterdag kwam eindelijk de zon door en ging de hele "
           "stad naar het strand."),
    "ru": ("Магазин открывается в девять утра и закрывается в шесть вечера.",
           "К сожалению, концерт отменён из-за шторма.",
           "Всю неделю было холодно и ветрено. В субботу наконец выглянуло солнце, и весь город "
           "отправился на пляж."),
    "ja": ("店は朝9時に開店し、夜6時に閉店します。",
           "申し訳ありませんが、嵐のためコンサートは中止になりました。",
           "一週間ずっと寒くて風が強かったです。土曜日にようやく太陽が出て、町中の人が海辺に出かけました。"),
}

# Where few-shot beat zero-shot on the dev set (bench/translate_prompts.py on the built-in 270M,
# chrF zero-shot -> few-shot): fr 41.8 -> 53.3, de 29.8 -> 52.9, es 34.9 -> 55.0, it 28.4 -> 57.8,
# pt 22.0 -> 50.9, nl 30.7 -> 46.7, ru 2.6 -> 46.4, ja 0.0 -> 24.1 (zero-shot mostly echoed the
# English: 4-19 of 20 outputs; few-shot 0-1). README, "Translation".
WINS: frozenset[str] = frozenset({"fr", "de", "es", "it", "pt", "nl", "ru", "ja"})


def base(tag: str) -> str:
    """The language of a tag without its region or script: 'pt-BR' -> 'pt'."""
    return tag.split("-")[0]


def template(tag: str, language: str, shots: int = 3) -> Optional[str]:
    """A completion template with `shots` examples into `language`, or None without examples.

    Fields left for the caller: {text}. Literal braces in the examples are escaped."""
    examples = EXAMPLES.get(base(tag))
    if examples is None or shots <= 0:
        return None
    pairs = [f"English: {src}\n{language}: {dst}" for src, dst in zip(SOURCES, examples, strict=True)][:shots]
    body = "\n\n".join(p.replace("{", "{{").replace("}", "}}") for p in pairs)
    return f"{body}\n\nEnglish: {{text}}\n{language}:"
