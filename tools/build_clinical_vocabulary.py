#!/usr/bin/env python
"""Build the medical-relevance vocabulary shipped in ``megatron_infimed/curation/quality/``.

    pip install simple-icd-10-cm==1.5.0 wordfreq==3.1.1   # build time only, never a runtime dependency
    python tools/build_clinical_vocabulary.py              # rewrites the two files below

| output                          | contents                                                                 |
|---------------------------------|--------------------------------------------------------------------------|
| clinical_vocabulary.txt         | ICD-10-CM words that are not general English + curated lists, weighted   |
| clinical_ending_exceptions.txt  | common English words with a clinical ending ("diploma", "photography")   |

Sources and licences:
- ICD-10-CM tabular list, April 2026 release, CDC National Center for Health Statistics: a US Government
  work in the public domain. Read from the copy bundled in the ``simple-icd-10-cm`` package (MIT), or from
  ``--icd-xml`` (the ``icd10cm-tabular-*.xml`` file of any release).
- General-English word frequencies: ``wordfreq`` 3.1.1 (code Apache-2.0, data CC BY-SA 4.0, Robyn Speer
  et al.). It decides which words are general English; the exception list is taken from its word list.
- The curated lists below, written for this project, and ``megatron_infimed/curation/clinical_terms.txt``,
  the project's earlier radiology list (planes, signal and density words): it was written against our own
  data, so its single words go through the general-English filter (step 3) like ICD words.

An ICD word (lowercase letters, 3+ long, from descriptions and inclusion terms) is kept when it is
1. from a chapter about the body: not 20 (external causes: vehicles, sports, places), not 21 (social and
   administrative circumstances), not section T51-T65 (toxic substances, plants and animals by name);
2. not a coding word of the classification itself (``unspecified``, ``NOS``, ``sequela``, ...);
3. not general English: Zipf frequency below ``GENERAL_ZIPF`` (4.0 = 10 per million words; "left" 5.6,
   "heart" 5.3, "lung" 4.1, "fracture" 3.7, "nevus" 1.9);
4. at least 10^``MIN_ENRICHMENT`` (about 30) times more frequent in ICD-10-CM text than in general
   English, so that everyday things a few codes name ("refrigerator", "pillow", "umbrella") stay out.
Curated terms skip 3-4 and carry a weight: 1.0, or 0.5 for ``EVERYDAY_WORDS``, the body and words with
an everyday sense, which everyday photo captions use all the time ("hand", "head", "plane").
"""

from __future__ import annotations

import argparse
import collections
import glob
import math
import os
import re
import textwrap
import unicodedata
import xml.etree.ElementTree as ET

from megatron_infimed.curation.quality.vocabulary import (
    CLINICAL_ENDINGS,
    EXCEPTIONS_FILE,
    VOCABULARY_FILE,
    looks_clinical,
    normalise_term,
    read_word_file,
    word_forms,
)

GENERAL_ZIPF = 4.0  # a word at least this frequent in general English is not clinical evidence by itself
MIN_ENRICHMENT = 1.5  # log10 of (share of ICD-10-CM texts with the word) / (its general-English frequency)
EXCEPTION_ZIPF = 3.0  # a word with a clinical ending this frequent in English is a common word ("diploma")
RADIOLOGY_TERMS_FILE = os.path.join(os.path.dirname(VOCABULARY_FILE), "..", "clinical_terms.txt")
EXCLUDED_CHAPTERS = {"20", "21"}
EXCLUDED_SECTIONS = {"T51-T65"}
# The classification's own conventions (its "Instructional Notations"), not clinical content.
CODING_WORDS = {"unspecified", "specified", "other", "classified", "elsewhere", "nec", "nos", "code", "codes",
                "coded", "encounter", "sequela", "sequelae", "initial", "subsequent", "category", "certain"}

# Curated lists: space-separated words, "; " after each phrase. Weight 1.0 unless said otherwise.
ANATOMY = """
heart lung liver kidney brain bowel colon stomach spleen pancreas gallbladder bladder uterus ovary prostate
esophagus oesophagus intestine duodenum jejunum ileum cecum caecum appendix rectum anus artery vein aorta
vessel capillary spine vertebra vertebrae skull bone muscle tendon ligament cartilage nerve blood tissue
organ gland thyroid adrenal pituitary trachea bronchus bronchi larynx pharynx diaphragm rib pelvis femur
tibia fibula humerus ulna sternum clavicle scapula retina cornea sclera conjunctiva eyelid placenta fetus
embryo mucosa epithelium endothelium stroma dermis epidermis peritoneum pleura pericardium meninges
cortex cerebellum brainstem thalamus ventricle atrium gingiva molar premolar incisor dentin marrow
lymph node; bone marrow; spinal cord; white matter; grey matter; gray matter; optic disc; optic nerve;
"""
SYSTEMS = """
cardiovascular circulatory respiratory digestive gastrointestinal endocrine musculoskeletal skeletal
urinary genitourinary urogenital reproductive integumentary lymphatic immune hematopoietic haematopoietic
hepatobiliary renal hepatic pulmonary cardiac neurological neurologic neural
cardiology dermatology pathology radiology neurology ophthalmology oncology gastroenterology urology
gynecology obstetrics orthopedics dentistry histopathology cytopathology hematology nephrology
nervous system; central nervous system; peripheral nervous system;
"""
MODALITIES = """
ct cta mri mra spect radiograph radiography radiographic fluoroscopy ultrasound sonography
ultrasonography doppler echocardiogram echocardiography mammogram mammography angiogram angiography
tomography histology histological histologic cytology biopsy specimen stain stained staining hematoxylin
eosin immunohistochemistry immunohistochemical ihc microscopy microscopic micrograph photomicrograph
dermoscopy dermatoscopy dermoscopic fundus fundoscopy ophthalmoscopy endoscopy endoscopic colonoscopy
gastroscopy bronchoscopy cystoscopy laparoscopy ecg ekg electrocardiogram eeg emg holter
x ray; xray; h&e; h and e; pet ct; pet scan; ct scan; mri scan; optical coherence tomography; slit lamp;
contrast enhanced; t1 weighted; t2 weighted; diffusion weighted;
"""
CLINICAL = """
diagnosis prognosis lesion tumor tumour cancer patient abnormal abnormality clinical medical
"""
# Common English, yet rarely in an everyday photo caption: ICD-10-CM words that step 3 removes, picked by
# hand among those with no everyday sense ("chronic" yes; "joint", "viral", "pressure" no), and radiology
# report words.
COMMON_CLINICAL = """
acute chronic disease disorder syndrome infection pregnancy diabetes trauma fever bleeding symptom surgery
surgical dental bacteria virus pain injury
mass contrast pa ap normal finding findings
"""
# Weight 0.5: what everyday photo captions say all the time, the body (a photo of a person shows one) and
# words with an everyday sense (plane: aircraft, film: camera, healthy: food). One of them alone does not
# make a text medical; two do, or one with a full-weight term.
EVERYDAY_WORDS = """
body head neck chest shoulder arm wrist hand finger thumb hip leg knee foot toe eye ear nose mouth lip
tongue tooth teeth skin nail
plane film fat scan fluid healthy
"""


def curated(block: str) -> list[str]:
    """A curated list's terms: ``"ct mri\\nx ray; h&e;"`` -> ``["ct", "mri", "x ray", "h&e"]``."""
    terms = []
    for line in block.strip().splitlines():
        terms += [normalise_term(p) for p in line.split(";") if p.strip()] if ";" in line else line.split()
    return terms


def radiology_terms(path: str, zipf) -> list[str]:
    """The earlier curated list: all phrases, and the single words that are not general English."""
    terms = read_word_file(path)
    return sorted(t for t in terms if " " in t or zipf(t) < GENERAL_ZIPF)


def icd_texts(xml_path: str) -> list[str]:
    """Descriptions and inclusion terms of the kept chapters and sections, accents removed."""
    root = ET.parse(xml_path).getroot()
    texts = []
    for chapter in root.iter("chapter"):
        if chapter.findtext("name") in EXCLUDED_CHAPTERS:
            continue
        for section in chapter.findall("section"):
            if section.get("id") in EXCLUDED_SECTIONS:
                continue
            texts += [d.text or "" for d in section.iter("desc")]
            texts += [n.text or "" for term in section.iter("inclusionTerm") for n in term.iter("note")]
    return [unicodedata.normalize("NFKD", t).encode("ascii", "ignore").decode().lower() for t in texts]


def icd_words(texts: list[str], zipf) -> list[str]:
    """Words of ``texts`` that pass selection steps 2-4 of the module docstring."""
    documents = collections.Counter(w for t in texts for w in set(re.findall(r"[a-z]{3,}", t)))
    kept = []
    for word, count in documents.items():
        z = zipf(word)
        enrichment = math.log10(count / len(texts)) - (z - 9)  # Zipf z = log10(frequency per 10^9 words)
        if word not in CODING_WORDS and z < GENERAL_ZIPF and enrichment >= MIN_ENRICHMENT:
            kept.append(word)
    return sorted(kept)


def ending_exceptions(vocabulary: set[str], wordlist, zipf) -> list[str]:
    """Common English words that only look clinical: a clinical ending, frequent, not in the vocabulary."""
    exceptions = []
    for word in wordlist:
        if (word.isalpha() and looks_clinical(word) and not vocabulary.intersection(word_forms(word))
                and zipf(word) >= EXCEPTION_ZIPF):
            exceptions.append(word)
    return sorted(exceptions)


def default_icd_xml() -> str:
    import simple_icd_10_cm

    found = glob.glob(os.path.join(os.path.dirname(simple_icd_10_cm.__file__), "data", "icd10c*-tabular-*.xml"))
    if not found:
        raise SystemExit("no ICD-10-CM tabular XML in simple_icd_10_cm/data; pass --icd-xml")
    return found[0]


def write(path: str, header: str, lines: list[str]) -> None:
    """``header`` as ``#`` comment lines, then ``lines``: the format ``read_word_file`` reads."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines()))
        f.write("".join(line + "\n" for line in lines))
    terms = sum(not line.startswith("[") for line in lines)
    print(f"{path}: {terms} terms, {os.path.getsize(path) // 1024} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--icd-xml", help="ICD-10-CM tabular XML (default: the copy in simple_icd_10_cm)")
    args = parser.parse_args()
    import wordfreq

    def zipf(w: str) -> float:
        return wordfreq.zipf_frequency(w, "en")

    xml_path = args.icd_xml or default_icd_xml()
    from_icd = icd_words(icd_texts(xml_path), zipf)
    weak = set(curated(EVERYDAY_WORDS))
    specific = set(from_icd).union(*map(curated, (ANATOMY, SYSTEMS, MODALITIES, CLINICAL, COMMON_CLINICAL)),
                                   radiology_terms(RADIOLOGY_TERMS_FILE, zipf)) - weak
    write(VOCABULARY_FILE, f"""
Clinical vocabulary of the medical-relevance dimension: one term per line (lowercase; hyphen = space),
under the weight it counts with. Generated by tools/build_clinical_vocabulary.py; edit that script.
Sources: ICD-10-CM tabular list ({os.path.basename(xml_path)}), CDC National Center for Health
Statistics, public domain (US Government work): {len(from_icd)} words, kept when their Zipf frequency in
general English (wordfreq 3.1.1, data CC BY-SA 4.0) is < {GENERAL_ZIPF} and their log10 enrichment in
ICD-10-CM text over general English is >= {MIN_ENRICHMENT}. The rest: curated lists of this project
(in that script, and curation/clinical_terms.txt).""",
          ["[weight 1.0]", *sorted(specific), "[weight 0.5]", *sorted(weak)])
    exceptions = ending_exceptions(specific | weak, wordfreq.iter_wordlist("en"), zipf)
    endings = textwrap.fill(", ".join("-" + e for e in CLINICAL_ENDINGS), 100)
    write(EXCEPTIONS_FILE, f"""
Common English words with a clinical ending that are not clinical: Zipf frequency >= {EXCEPTION_ZIPF} in
wordfreq 3.1.1 and not in clinical_vocabulary.txt. The endings:
{endings}
Derived from the wordfreq English word list (Robyn Speer et al., https://github.com/rspeer/wordfreq),
data licensed CC BY-SA 4.0; this list is shared under the same licence.
Generated by tools/build_clinical_vocabulary.py; edit that script, not this file.""", exceptions)


if __name__ == "__main__":
    main()
