"""The output and combined explainer prompts: they render the stored output evidence (and the combined one the
train examples too), record it in the label's provenance, and refuse a feature without it."""

import asyncio

import pytest
from doubles_llm import ScriptedLLMDouble
from handmade_examples import MONTHS, animal_feature, with_output

from autointerp.config import JobConfig
from autointerp.errors import AutointerpError
from autointerp.explain import explain, explainer_messages
from autointerp.pipeline import check_job
from autointerp.prompts import load_prompt

def text_of(messages):
    return "\n".join(m["content"] for m in messages)


def test_output_prompt_shows_output_evidence_and_no_examples():
    examples = with_output(animal_feature())
    messages, shown = explainer_messages(examples, "output")
    text = text_of(messages)
    assert shown == []
    # tokens shown stripped of their leading space, like the input side's token counts
    assert '"January", "February"' in text and '"def", "import"' in text
    assert '"January" (+0.090)' in text and '"the" (-0.090)' in text  # amplification with its changes
    assert "September" not in text  # N_OUTPUT_SHOWN tokens per side
    assert "farmer" not in text and "windowsill" not in text  # words of the train excerpts
    assert "<<" not in text


def test_combined_prompt_shows_examples_and_output_evidence_and_token_counts():
    examples = with_output(animal_feature(), amplification=False)
    messages, shown = explainer_messages(examples, "combined", evidence=True)
    text = text_of(messages)
    assert shown and set(shown) <= examples.train.context_ids()
    assert "<<" in text and '"January"' in text and "Token counts over these" in text
    assert "amplified" not in text  # not computed: not shown


@pytest.mark.parametrize("prompt", ["output", "combined"])
def test_a_feature_without_output_evidence_is_refused_with_the_command_to_run(prompt):
    with pytest.raises(AutointerpError, match="no output evidence stored; compute it with `autointerp effects"):
        explainer_messages(animal_feature(), prompt)


def test_the_label_records_the_prompt_and_the_output_evidence_it_saw():
    llm = ScriptedLLMDouble(lambda call: "Label: names of months")
    [exp] = asyncio.run(explain(with_output(animal_feature()), llm, prompt="output"))
    template = load_prompt("explain_output")
    assert (exp.prompt_name, exp.prompt_hash) == ("explain_output.v1", template.sha256)
    shown = exp.details["output_evidence"]
    assert shown["shown"]["logit_lens"]["promoted"] == MONTHS[:8]
    assert shown["shown"]["amplification"]["suppressed"] == [" the", " a"]
    assert shown["computed"]["amplification"] == {"factor": 10.0}
    assert '"January"' in llm.calls[0].messages[-1]["content"]


def test_a_label_that_repeats_the_output_prompt_is_refused():
    llm = ScriptedLLMDouble(lambda call: "Label: what does this feature make the model say next")
    with pytest.raises(AutointerpError, match="no usable label"):
        asyncio.run(explain(with_output(animal_feature()), llm, prompt="output"))


def test_token_counts_need_a_prompt_with_examples():
    with pytest.raises(AutointerpError, match="use the combined prompt"):
        check_job(JobConfig(source="s", prompt="output", evidence=True))
    check_job(JobConfig(source="s", prompt="combined", evidence=True))
