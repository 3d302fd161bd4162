"""The determinism check's comparison (nbtext.py) masks times and nothing else: hand-made outputs."""
import nbtext


def stdout(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def test_times_are_masked_but_other_numbers_are_not():
    a = [stdout("context 256: MHA 6.1 ms -> 1.3x\nloss 2.3412\n")]
    b = [stdout("context 256: MHA 9.8 ms -> 1.1x\nloss 2.3412\n")]
    assert nbtext.cell_text("x", a) == nbtext.cell_text("x", b)
    wider = [stdout("context 256: MHA  10.2 ms -> 1.1x\nloss 2.3412\n")]      # "{:5.1f}" grew by a digit
    assert nbtext.cell_text("x", a) == nbtext.cell_text("x", wider)
    c = [stdout("context 256: MHA 9.8 ms -> 1.1x\nloss 2.3413\n")]
    assert nbtext.cell_text("x", a) != nbtext.cell_text("x", c)


def test_rates_and_measured_speed_ups_are_timings():
    a = nbtext.mask("plain: 405 tokens/s\nmeasured speed-up 0.74x (ideal 1.34x)\naccepted 3 of 4 drafts")
    b = nbtext.mask("plain: 486 tokens/s\nmeasured speed-up 0.81x (ideal 1.34x)\naccepted 3 of 4 drafts")
    assert a == b and "accepted 3 of 4" in a


def test_progress_bar_redraws_keep_the_last_state_only():
    assert nbtext.mask("step 1/3\rstep 2/3\rdone 3/3\n") == "done 3/3"


def test_semicolon_hides_the_cell_result_like_ipython():
    result = {"output_type": "execute_result", "data": {"text/plain": "[<Figure>]", "image/png": "<image/png>"}}
    assert nbtext.image_count("f();", [result]) == 0
    assert nbtext.image_count("f()  # draw", [result]) == 1
    assert nbtext.cell_text("f()", [result]) == ""        # a picture's text/plain is only a repr
    assert "7" in nbtext.cell_text("3 + 4", [{"output_type": "execute_result", "data": {"text/plain": "7"}}])


def test_errors_and_widgets_are_recognised():
    err = {"output_type": "error", "ename": "ValueError", "evalue": "k must be positive", "traceback": []}
    assert nbtext.errors([stdout("ok"), err]) == ["ValueError: k must be positive"]
    assert nbtext.cell_text("f()", [err]) == "ERROR ValueError: k must be positive"
    assert nbtext.draws_widget("interactive(f, {})") and not nbtext.draws_widget("print(1)")
    bar = {"output_type": "display_data", "data": {nbtext.WIDGET_MIME: {"model_id": "1"}, "text/plain": "  0%|"}}
    assert nbtext.cell_text("train()", [bar, stdout("loss 1.25\n")]) == "loss 1.25"   # a progress bar hides no prints


def test_words_after_a_timing_are_not_masked_and_are_named():
    """'(1.3x faster)' and '(0.8x slower)' mask to different lines, and timing_word_changes says why they differ."""
    a = nbtext.mask("fused 1.20 ms (1.3x faster)\nloss 2.5")
    b = nbtext.mask("fused 1.50 ms (0.8x slower)\nloss 2.5")
    assert a != b
    changes = nbtext.timing_word_changes(a, b)
    assert len(changes) == 1 and "faster" in changes[0] and "slower" in changes[0]
    assert "wall-clock" in changes[0]
    met = nbtext.mask("speed-up 1.35x; goal (>= 1.3x): met")
    not_met = nbtext.mask("speed-up 1.21x; goal (>= 1.3x): NOT met")
    assert met != not_met and len(nbtext.timing_word_changes(met, not_met)) == 1
    # a changed number on a deterministic line is an ordinary difference, not a timing's words
    assert nbtext.timing_word_changes("loss 2.5", "loss 2.6") == []
    assert nbtext.timing_word_changes(a, a) == []


def test_a_timing_judged_in_words_is_found_in_one_run():
    text = ("plain 405 tok/s, speculative 520 tok/s: speed-up 1.28x\n"
            "most predictable domain: chinese (acceptance 85.0%): goal met\n"
            "speed-up 1.35x; goal (>= 1.3x): met\n"
            "fused 1.2 ms = 1.25x plain (<= 1.5x on this machine: yes)\n"
            "目标为至多 1.5 倍：已达到, 1.3 s")
    found = nbtext.timing_verdicts(text)
    assert found == ["speed-up 1.35x; goal (>= 1.3x): met", "fused 1.2 ms = 1.25x plain (<= 1.5x on this machine: yes)",
                     "目标为至多 1.5 倍：已达到, 1.3 s"]
    assert nbtext.timing_verdicts(nbtext.mask(text)) == [nbtext.mask(line) for line in found]
    assert nbtext.timing_verdicts("measured speed-up 0.74x (ideal 1.34x)\nc_verify 1.10, no cache 2.0 ms") == []
