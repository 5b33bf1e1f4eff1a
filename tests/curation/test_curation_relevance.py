"""Medical relevance on real data: what it keeps, what it drops, and the vocabulary rules behind it.

The held-out sets below were written before the vocabulary and scoring were built and are not edited
to fit them: realistic questions from specialties VQA-RAD lacks, and everyday-photo questions.
Real sets: VQA-RAD (CC0) and COCO captions mini (captions: COCO Consortium, CC BY 4.0; photos: Flickr,
licences in its IMAGES.md), both under shared/data.
"""

from pathlib import Path

import pytest

from megatron_infimed.curation import PrepareConfig, prepare
from megatron_infimed.curation.formats import read_records
from megatron_infimed.curation.quality import QualityConfig, build_scorers
from megatron_infimed.curation.quality.vocabulary import EXCEPTIONS_FILE, VOCABULARY_FILE, ClinicalVocabulary
from megatron_infimed.curation.record import Record

CONFIG = QualityConfig.load()
SCORER = build_scorers(CONFIG)["medical_relevance"]
THRESHOLD = CONFIG.thresholds["medical_relevance"]
VOCABULARY = ClinicalVocabulary.load()

# Issue #16: real pathology VQA records the earlier term list dropped as medical_relevance/no_clinical_terms.
PATHOLOGY_EXAMPLES = (
    ("what is present?", "endocrine"),
    ("is cardiovascular present?", "yes"),
    ("what does this image show?", "compound nevus"),
    ("is varices present?", "yes"),
    ("does this image show early placental development?", "yes"),
)
HELD_OUT_MEDICAL = (
    # dermatology
    ("What type of lesion is shown on the forearm?", "A pigmented macule with irregular borders."),
    ("Is this lesion suspicious for melanoma?", "yes"),
    ("What is the most likely diagnosis?", "psoriasis"),
    ("Describe the rash.", "Erythematous scaly plaques on the extensor surfaces of the elbows."),
    ("Does the dermoscopy show a pigment network?", "yes"),
    ("What is seen on the patient's back?", "Multiple seborrheic keratoses."),
    ("Is there ulceration?", "no"),
    # histopathology
    ("What stain was used?", "H&E"),
    ("What tissue is shown?", "Squamous epithelium"),
    ("Are mitotic figures visible?", "yes"),
    ("What is the grade of the tumor?", "Grade 2"),
    ("Which cells are infiltrating the stroma?", "lymphocytes"),
    ("Is there evidence of necrosis?", "no"),
    ("What does the immunohistochemistry show?", "Strong nuclear staining for Ki-67."),
    ("What is present in the glomeruli?", "crescents"),
    # ophthalmology
    ("What does the fundus photograph show?", "Dot and blot haemorrhages with hard exudates."),
    ("Is the optic disc cupping increased?", "yes"),
    ("What is the diagnosis?", "diabetic retinopathy"),
    ("Is there macular edema on the OCT?", "yes"),
    ("Which layer is detached?", "the retina"),
    ("What is seen in the anterior chamber?", "hypopyon"),
    ("Is the cornea clear?", "no"),
    # endoscopy
    ("What is seen in the sigmoid colon?", "A sessile polyp about 8 mm."),
    ("Is this Barrett's esophagus?", "yes"),
    ("What does the gastroscopy show?", "A clean-based ulcer in the duodenal bulb."),
    ("Is there active bleeding?", "no"),
    ("Which part of the bowel is this?", "terminal ileum"),
    ("Are there diverticula?", "yes"),
    # cardiology, ECG and echo
    ("What is the rhythm?", "atrial fibrillation"),
    ("Is there ST elevation?", "yes, in leads II, III and aVF"),
    ("What is the heart rate?", "about 110 bpm"),
    ("Is the QT interval prolonged?", "no"),
    ("What abnormality is seen in V1?", "right bundle branch block"),
    ("Is this a sinus rhythm?", "yes"),
    ("What does the echocardiogram show?", "Reduced ejection fraction with a dilated left ventricle."),
    # dental
    ("Which tooth is affected?", "the lower left first molar"),
    ("Is there periapical radiolucency?", "yes"),
    ("What does the panoramic radiograph show?", "An impacted third molar."),
    ("Is there caries on the occlusal surface?", "yes"),
    ("What is the state of the gingiva?", "inflamed and bleeding"),
    ("Is there bone loss around the implant?", "no"),
    # few clinical words
    ("What is abnormal here?", "clubbing of the fingers"),
    ("Where is the abnormality?", "left upper eyelid"),
    ("What color is the lesion?", "brown"),
)
HELD_OUT_GENERAL = (
    ("What color is the bus?", "red"),
    ("How many people are in the picture?", "three"),
    ("What is the man holding?", "a frisbee"),
    ("Is the dog sleeping?", "yes"),
    ("What sport is being played?", "tennis"),
    ("Is it raining?", "no"),
    ("What is on the plate?", "pizza"),
    ("Where is the cat sitting?", "on the couch"),
    ("What time of day is it?", "evening"),
    ("Is the woman wearing glasses?", "yes"),
    ("What animal is this?", "giraffe"),
    ("What is the boy eating?", "a hot dog"),
    ("Is the train moving?", "no"),
    ("What brand is the laptop?", "apple"),
    ("How many zebras are there?", "two"),
    ("What is the girl doing with her hands?", "waving"),
    ("Is there a clock on the tower?", "yes"),
    ("What is in the vase?", "flowers"),
    ("Is the man's head covered?", "yes, with a cap"),
    ("Describe the image.", "A kitchen with white cabinets and a stainless steel refrigerator."),
    ("Describe the image.", "A surfer riding a large wave at the beach."),
    ("What is the skateboarder doing?", "a jump"),
    ("Is the street busy?", "yes"),
    ("What is the weather like?", "sunny"),
    ("What fruit is on the table?", "bananas"),
    ("Is the baby smiling?", "yes"),
    ("What is the person lying on?", "a bed"),
    ("Are the lights on?", "no"),
    ("What does the sign say?", "stop"),
    ("What is the man cutting?", "a cake"),
)


def qa(question: str, answer: str) -> Record:
    conv = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
    return Record("q", "test", conv, ["x.png"], {})


def is_medical(record: Record) -> bool:
    return SCORER.score(record, []).score >= THRESHOLD


@pytest.fixture(scope="module")
def coco_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "coco_captions_mini"


@pytest.mark.parametrize("question, answer", PATHOLOGY_EXAMPLES)
def test_pathology_examples_of_issue_16_are_medical(question, answer):
    assert is_medical(qa(question, answer))


def test_held_out_specialties_at_most_3_percent_dropped():
    dropped = [pair for pair in HELD_OUT_MEDICAL if not is_medical(qa(*pair))]
    assert len(dropped) <= 0.03 * len(HELD_OUT_MEDICAL), dropped


def test_held_out_everyday_questions_at_least_95_percent_dropped():
    kept = [pair for pair in HELD_OUT_GENERAL if is_medical(qa(*pair))]
    assert len(kept) <= 0.05 * len(HELD_OUT_GENERAL), kept


@pytest.mark.parametrize("split", ["train", "test"])
def test_vqa_rad_at_most_3_percent_dropped_as_not_medical(vqa_rad_dir, split):
    records = read_records("vqa_rad", str(vqa_rad_dir / "VQA_RAD_Dataset_Public.json"), split=split).items
    dropped = [r.conversations for r in records if not is_medical(r)]
    assert len(dropped) <= 0.03 * len(records), (len(dropped), dropped[:5])


def curate_coco(coco_dir: Path, out: Path, domain: str) -> dict:
    return prepare(PrepareConfig(format="captions", input=str(coco_dir / "captions.jsonl"), out=str(out),
                                 progress=False, domain=domain))


def test_coco_captions_at_least_95_percent_dropped_when_curated_as_medical(coco_dir, tmp_path):
    report = curate_coco(coco_dir, tmp_path, "medical")
    not_medical = sum(n for reason, n in report["dropped"].items() if reason.startswith("medical_relevance/"))
    assert not_medical >= 0.95 * report["total"]


def test_coco_captions_at_least_95_percent_kept_with_domain_general(coco_dir, tmp_path):
    report = curate_coco(coco_dir, tmp_path, "general")
    assert report["kept"] >= 0.95 * report["total"]
    assert not any(reason.startswith("medical_relevance/") for reason in report["dropped"])


def test_one_everyday_body_word_is_not_medical_but_two_are():
    assert not is_medical(qa("Is the man's head covered?", "yes, with a cap"))
    assert is_medical(qa("Which part of the body does this image show?", "chest"))
    assert SCORER.score(qa("Is the man's head covered?", "yes"), []).issues == ("few_clinical_terms",)


@pytest.mark.parametrize("word", ["left", "other", "unspecified", "of", "right", "with", "person", "bed"])
def test_general_english_words_are_not_clinical(word):
    assert VOCABULARY.weight(word) == 0.0


@pytest.mark.parametrize("word, weight", [
    ("endocrine", 1.0), ("nevus", 1.0), ("ct", 1.0), ("h&e", 1.0), ("x ray", 1.0),  # listed
    ("effusions", 1.0), ("metastases", 1.0), ("varices", 1.0), ("diverticula", 1.0),  # plurals, Latin too
    ("cholangiocarcinoma", 1.0), ("pancreaticoduodenectomy", 1.0),  # clinical ending, not listed
    ("diploma", 0.0), ("photography", 0.0), ("nostalgia", 0.0), ("program", 0.0),  # common English endings
    ("chest", 0.5), ("hand", 0.5), ("plane", 0.5),  # everyday photo words
])
def test_term_weights(word, weight):
    assert VOCABULARY.weight(word) == weight


def test_shipped_files_state_source_and_licence():
    vocabulary, exceptions = Path(VOCABULARY_FILE).read_text(), Path(EXCEPTIONS_FILE).read_text()
    assert "ICD-10-CM" in vocabulary and "public domain" in vocabulary and "wordfreq" in vocabulary
    assert "CC BY-SA 4.0" in exceptions
    assert len(VOCABULARY.weights) > 5000 and Path(VOCABULARY_FILE).stat().st_size < 300_000


def test_terms_file_option_replaces_the_vocabulary(tmp_path):
    path = tmp_path / "terms.txt"
    path.write_text("# zoo\nzebra\n[weight 0.5]\ngiraffe\n")
    options = {**CONFIG.options, "medical_relevance": {"terms_file": str(path)}}
    scorer = build_scorers(QualityConfig(CONFIG.thresholds, options))["medical_relevance"]
    assert scorer.score(qa("How many zebras?", "two"), []).score == 0.5
    assert scorer.score(qa("Is the giraffe eating?", "yes"), []).score == 0.25
    assert scorer.score(qa("Is there a pleural effusion?", "yes"), []).score == 0.0
