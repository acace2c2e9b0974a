//! The language of a question, so that what hearth itself says (a decline) and what the
//! generator writes are in the language the user asked in, whatever the documents' language.
//!
//! Detection is whatlang's trigram profiles, trusted from a confidence of 0.3 (but never for
//! Latin or Esperanto), else asked again among the eleven languages hearth has messages in
//! (trusted from 0.5): on the 146 labelled multilingual questions (`testdata/multilingual`,
//! ten languages and English) it names every one right (English is also the fallback for an
//! undetected question). Quoted answers are the documents' own words, in their language: a
//! quote translated would no longer be a quote, and its citation span would not hold.

use whatlang::Lang;

/// Least whatlang confidence at which a question's language is believed.
const MIN_CONFIDENCE: f64 = 0.3;

/// Least confidence for the second, narrower detection.
const MIN_NARROW_CONFIDENCE: f64 = 0.5;

/// Languages nobody asks in, whose profiles catch technical English ("promiscuous mode with
/// ifconfig" reads as Latin).
const NOT_ASKED_IN: [Lang; 2] = [Lang::Lat, Lang::Epo];

/// Words of English questions that are not words of the languages hearth has messages in (nor
/// of Danish, Norwegian or Swedish): "of" is Dutch, "has" and "use" Spanish, "to" and "my"
/// Polish, "have" and "for" Scandinavian, so none of them is here.
const ENGLISH: [&str; 22] = [
    "the", "and", "how", "what", "does", "which", "where", "when", "why", "should", "would",
    "could", "it", "into", "from", "with", "that", "this", "there", "get", "make", "your",
];

/// The language a question is written in, when it can be told.
///
/// A question with a word of [`ENGLISH`] is English: the trigram profiles took 9 of the 200
/// English questions of the labelled set for Portuguese, French or German (short questions full
/// of names: "how do I use URLPattern in Node to match route paths?"), and no question of the
/// 146 multilingual ones nor of the labelled set's 11 German and French ones has such a word.
pub(crate) fn of_question(text: &str) -> Option<Lang> {
    let lower = text.to_lowercase();
    if lower
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| ENGLISH.contains(&w))
    {
        return Some(Lang::Eng);
    }
    let open = whatlang::detect(text)?;
    if open.confidence() >= MIN_CONFIDENCE && !NOT_ASKED_IN.contains(&open.lang()) {
        return Some(open.lang());
    }
    // A question the open detection is unsure of (short Dutch questions read as Afrikaans)
    // is asked again among English and the languages hearth has declines in.
    let narrow = std::iter::once(Lang::Eng)
        .chain(DECLINES.iter().map(|(l, _)| *l))
        .collect();
    whatlang::Detector::with_allowlist(narrow)
        .detect(text)
        .filter(|info| info.confidence() >= MIN_NARROW_CONFIDENCE)
        .map(|info| info.lang())
}

/// What hearth says itself when it declines, in one language.
struct Declines {
    /// Nothing relevant was retrieved ([`super::NOTHING_RELEVANT`] in English).
    nothing_relevant: &'static str,
    /// Passages were found but none answers (quoted answers; [`super::NOT_FOUND`]).
    not_found: &'static str,
    /// No statement of a generated answer is supported (strict; [`super::NOT_SUPPORTED`]).
    not_supported: &'static str,
    /// The question names a term no passage has (`{}`: the terms; [`NOT_MENTIONED`]).
    not_mentioned: &'static str,
}

/// What an answer says when the question names terms that no passage has (`{}`: the terms).
const NOT_MENTIONED: &str = "The documents do not say: no passage found mentions {}.";

/// The languages hearth has its own declines in, besides English.
const DECLINES: [(Lang, Declines); 10] = [
    (
        Lang::Deu,
        Declines {
            nothing_relevant: "Ich habe in den Dokumenten dieser Sammlung nichts dazu gefunden.",
            not_found: "Die Dokumente sagen dazu nichts: keine gefundene Passage beantwortet diese Frage.",
            not_supported: "Die Dokumente sagen dazu nichts: keine Aussage der erzeugten Antwort wird von den gefundenen Passagen gestützt.",
            not_mentioned: "Die Dokumente sagen dazu nichts: keine gefundene Passage erwähnt {}.",
        },
    ),
    (
        Lang::Fra,
        Declines {
            nothing_relevant: "Je n'ai rien trouvé à ce sujet dans les documents de cette collection.",
            not_found: "Les documents ne le disent pas : aucun passage trouvé ne répond à cette question.",
            not_supported: "Les documents ne le disent pas : aucune affirmation de la réponse générée n'est étayée par les passages trouvés.",
            not_mentioned: "Les documents ne le disent pas : aucun passage trouvé ne mentionne {}.",
        },
    ),
    (
        Lang::Spa,
        Declines {
            nothing_relevant: "No encontré nada sobre esto en los documentos de esta colección.",
            not_found: "Los documentos no lo dicen: ningún pasaje encontrado responde a esta pregunta.",
            not_supported: "Los documentos no lo dicen: ninguna afirmación de la respuesta generada está respaldada por los pasajes encontrados.",
            not_mentioned: "Los documentos no lo dicen: ningún pasaje encontrado menciona {}.",
        },
    ),
    (
        Lang::Ita,
        Declines {
            nothing_relevant: "Non ho trovato nulla in merito nei documenti di questa raccolta.",
            not_found: "I documenti non lo dicono: nessun passaggio trovato risponde a questa domanda.",
            not_supported: "I documenti non lo dicono: nessuna affermazione della risposta generata è supportata dai passaggi trovati.",
            not_mentioned: "I documenti non lo dicono: nessun passaggio trovato menziona {}.",
        },
    ),
    (
        Lang::Nld,
        Declines {
            nothing_relevant: "Ik heb hierover niets gevonden in de documenten van deze verzameling.",
            not_found: "De documenten zeggen dit niet: geen gevonden passage beantwoordt deze vraag.",
            not_supported: "De documenten zeggen dit niet: geen enkele bewering van het gegenereerde antwoord wordt door de gevonden passages gestaafd.",
            not_mentioned: "De documenten zeggen dit niet: geen gevonden passage noemt {}.",
        },
    ),
    (
        Lang::Pol,
        Declines {
            nothing_relevant: "Nie znalazłem nic na ten temat w dokumentach tej kolekcji.",
            not_found: "Dokumenty tego nie mówią: żaden znaleziony fragment nie odpowiada na to pytanie.",
            not_supported: "Dokumenty tego nie mówią: żadne stwierdzenie wygenerowanej odpowiedzi nie jest poparte znalezionymi fragmentami.",
            not_mentioned: "Dokumenty tego nie mówią: żaden znaleziony fragment nie wspomina o {}.",
        },
    ),
    (
        Lang::Por,
        Declines {
            nothing_relevant: "Não encontrei nada sobre isso nos documentos desta coleção.",
            not_found: "Os documentos não dizem: nenhum trecho encontrado responde a esta pergunta.",
            not_supported: "Os documentos não dizem: nenhuma afirmação da resposta gerada é sustentada pelos trechos encontrados.",
            not_mentioned: "Os documentos não dizem: nenhum trecho encontrado menciona {}.",
        },
    ),
    (
        Lang::Rus,
        Declines {
            nothing_relevant: "Я не нашёл ничего об этом в документах этой коллекции.",
            not_found: "В документах об этом не сказано: ни один найденный фрагмент не отвечает на этот вопрос.",
            not_supported: "В документах об этом не сказано: ни одно утверждение сгенерированного ответа не подтверждается найденными фрагментами.",
            not_mentioned: "В документах об этом не сказано: ни один найденный фрагмент не упоминает {}.",
        },
    ),
    (
        Lang::Cmn,
        Declines {
            nothing_relevant: "我在这个集合的文档中没有找到与此相关的内容。",
            not_found: "文档中没有说明：找到的段落都没有回答这个问题。",
            not_supported: "文档中没有说明：生成的回答中没有任何陈述得到找到的段落的支持。",
            not_mentioned: "文档中没有说明：找到的段落都没有提到{}。",
        },
    ),
    (
        Lang::Jpn,
        Declines {
            nothing_relevant: "このコレクションの文書には、これに関する記述が見つかりませんでした。",
            not_found: "文書には記載がありません。見つかったどの箇所もこの質問に答えていません。",
            not_supported: "文書には記載がありません。生成された回答のどの記述も、見つかった箇所によって裏付けられていません。",
            not_mentioned: "文書には記載がありません。見つかったどの箇所にも{}は出てきません。",
        },
    ),
];

fn declines(lang: Option<Lang>) -> Option<&'static Declines> {
    DECLINES
        .iter()
        .find(|(l, _)| Some(*l) == lang)
        .map(|(_, d)| d)
}

/// The answer when nothing relevant was retrieved, in `lang` where hearth has it (else
/// English, [`super::NOTHING_RELEVANT`]).
pub(crate) fn nothing_relevant(lang: Option<Lang>) -> &'static str {
    declines(lang).map_or(super::NOTHING_RELEVANT, |d| d.nothing_relevant)
}

/// The answer when passages were found but none answers (quoted answers), in `lang` where
/// hearth has it (else English, [`super::NOT_FOUND`]).
pub(crate) fn not_found(lang: Option<Lang>) -> &'static str {
    declines(lang).map_or(super::NOT_FOUND, |d| d.not_found)
}

/// The answer when no statement of a generated answer is supported (strict mode), in `lang`
/// where hearth has it (else English, [`super::NOT_SUPPORTED`]).
pub(crate) fn not_supported(lang: Option<Lang>) -> &'static str {
    declines(lang).map_or(super::NOT_SUPPORTED, |d| d.not_supported)
}

/// The answer when the question names `terms` that no passage has, naming them, in `lang`
/// where hearth has it (else English).
pub(crate) fn not_mentioned(lang: Option<Lang>, terms: &[String]) -> String {
    let named = terms
        .iter()
        .map(|t| format!("“{t}”"))
        .collect::<Vec<_>>()
        .join(", ");
    declines(lang)
        .map_or(NOT_MENTIONED, |d| d.not_mentioned)
        .replacen("{}", &named, 1)
}

/// The sentence that makes the generator answer in the question's language, when the
/// question or a passage is in a language other than English (English when the question's
/// cannot be told); `None` for English questions over English passages, whose prompt stays as
/// it was measured.
pub(crate) fn instruction<'a>(
    question: Option<Lang>,
    passages: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    let foreign = |l: Option<Lang>| l.is_some_and(|l| l != Lang::Eng);
    if !foreign(question) && !passages.into_iter().any(|p| foreign(of_question(p))) {
        return None;
    }
    let name = question.map_or("English", |l| l.eng_name());
    Some(format!(
        "Write the answer in {name}, the language of the question, even when the passages are \
         in another language; keep commands, options, file names and numbers exactly as the \
         passages write them."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labelled questions' languages, as the multilingual set records them.
    fn expected(tag: &str) -> Lang {
        match tag {
            "en" => Lang::Eng,
            "de" => Lang::Deu,
            "fr" => Lang::Fra,
            "es" => Lang::Spa,
            "it" => Lang::Ita,
            "nl" => Lang::Nld,
            "pl" => Lang::Pol,
            "pt-br" => Lang::Por,
            "ru" => Lang::Rus,
            "zh" => Lang::Cmn,
            "ja" => Lang::Jpn,
            other => panic!("unknown language tag {other}"),
        }
    }

    #[test]
    fn the_labelled_questions_languages_are_told_and_never_mistaken() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/multilingual/questions.jsonl"
        );
        let (mut right, mut unknown, mut total) = (0, Vec::new(), 0);
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if line.trim().is_empty() {
                continue;
            }
            let q: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = q["question"].as_str().unwrap();
            let want = expected(q["lang"].as_str().unwrap());
            total += 1;
            match of_question(text) {
                Some(l) if l == want => right += 1,
                Some(l) => panic!("{text:?} taken for {l:?}, it is {want:?}"),
                // Undetected means English: right for an English question.
                None if want == Lang::Eng => right += 1,
                None => unknown.push(text.to_owned()),
            }
        }
        println!("{right} of {total} right; undetected: {unknown:?}");
        assert!(total >= 146);
        assert!(right * 100 >= total * 97, "{right} of {total}; {unknown:?}");
    }

    #[test]
    fn the_labelled_sets_english_questions_are_english() {
        // Its questions in other languages, by id.
        const OTHER: [(&str, Lang); 11] = [
            ("e141", Lang::Deu),
            ("e146", Lang::Deu),
            ("e147", Lang::Deu),
            ("e151", Lang::Deu),
            ("e188", Lang::Deu),
            ("e194", Lang::Deu),
            ("e158", Lang::Fra),
            ("e159", Lang::Fra),
            ("e160", Lang::Fra),
            ("e190", Lang::Fra),
            ("e191", Lang::Fra),
        ];
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/eval/questions.jsonl"
        );
        let mut total = 0;
        for line in std::fs::read_to_string(path).unwrap().lines() {
            if line.trim().is_empty() {
                continue;
            }
            let q: serde_json::Value = serde_json::from_str(line).unwrap();
            let (id, text) = (q["id"].as_str().unwrap(), q["question"].as_str().unwrap());
            let got = of_question(text);
            match OTHER.iter().find(|(i, _)| *i == id) {
                Some((_, want)) => assert_eq!(got, Some(*want), "{id} {text:?}"),
                None => assert!(
                    matches!(got, None | Some(Lang::Eng)),
                    "{id} {text:?} taken for {got:?}"
                ),
            }
            total += 1;
        }
        assert!(total >= 233);
    }

    #[test]
    fn declines_follow_the_question() {
        let de = of_question("Wie richte ich einen wiederkehrenden Auftrag in der crontab ein?");
        assert_eq!(de, Some(Lang::Deu));
        assert!(nothing_relevant(de).starts_with("Ich habe"));
        assert_eq!(
            not_mentioned(de, &["--defrag".into()]),
            "Die Dokumente sagen dazu nichts: keine gefundene Passage erwähnt “--defrag”."
        );
        assert_eq!(
            not_mentioned(None, &["URLPattern".into(), "-l".into()]),
            "The documents do not say: no passage found mentions “URLPattern”, “-l”."
        );
        assert_eq!(
            nothing_relevant(of_question("How do I rotate logs every week?")),
            super::super::NOTHING_RELEVANT
        );
        // Not one hearth has messages in: English.
        let sv = of_question("Hur roterar jag loggfiler varje vecka med logrotate?");
        assert_eq!(not_found(sv), super::super::NOT_FOUND);
        assert!(instruction(sv, []).unwrap().contains("in Swedish"));
        // An English question: nothing to add over English passages, English over others.
        let en = of_question("How do I rotate logs every week?");
        assert_eq!(
            instruction(en, ["Logs are rotated weekly by default."]),
            None
        );
        let line = instruction(en, ["Die Protokolle werden wöchentlich rotiert."]).unwrap();
        assert!(line.contains("in English"), "{line}");
    }
}
