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
