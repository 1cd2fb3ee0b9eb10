import io

from mnistgen.progress import Progress, clock


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_come_at_most_every_interval_and_always_at_the_end():
    timer, out = FakeClock(), io.StringIO()
    progress = Progress("train_gan", total=100, per_step=128, every=10, stream=out, timer=timer)
    for step in range(1, 101):
        timer.now += 0.5  # 0.5 s a step: a line every 20 steps
        progress.update(step, loss_d=1.0 / step)
    progress.done()
    lines = out.getvalue().splitlines()
    assert len(lines) == 6  # steps 6 (the first line, after 3 s), 26, 46, 66, 86, then done()
    assert lines[0] == ("train_gan: step 6/100 (6%), 256 images/s, 0:03 elapsed, 0:47 left, "
                        "loss_d 0.1667")
    assert lines[1].startswith("train_gan: step 26/100 (26%), 256 images/s, 0:13 elapsed")
    assert lines[-1].startswith("train_gan: step 100/100 (100%), 256 images/s, 0:50 elapsed, 0:00 left")


def test_rate_of_a_resumed_run_counts_only_its_own_steps():
    timer, out = FakeClock(), io.StringIO()
    progress = Progress("train_gan", total=1000, per_step=10, every=10, stream=out, timer=timer,
                        start_step=500)
    timer.now += 10
    progress.update(501)  # resumed at step 500: one step in 10 s
    assert "step 501/1000 (50%), 1 images/s" in out.getvalue()
    assert "1:23:10 left" in out.getvalue()  # 499 steps at 10 s each


def test_the_rate_counts_every_step_since_the_start_when_told_every_n_steps():
    """A loop that reports every 10 steps (evaluate's CAS, the judge every 50): its first
    line's rate counts the 10 steps, not one (which read 37 images/s and 1:11:29 left for
    a 40-s stage)."""
    timer, out = FakeClock(), io.StringIO()
    progress = Progress("evaluate", total=1240, per_step=128, every=10, stream=out, timer=timer)
    timer.now += 3.2
    progress.update(10)
    assert out.getvalue().startswith("evaluate: step 10/1240 (1%), 400 images/s, 0:03 elapsed, 6:34 left")


def test_the_first_line_says_within_seconds_how_long_a_huge_run_takes():
    """`epochs: 10000` (9,370,000 steps at 0.5 s): the first line, 3 s in, says 1,301 hours
    are left, where it used to wait for the 10-s interval."""
    timer, out = FakeClock(), io.StringIO()
    progress = Progress("train_gan", total=9_370_000, per_step=64, every=10, stream=out, timer=timer)
    for step in range(1, 7):
        timer.now += 0.5
        progress.update(step)
    first = out.getvalue().splitlines()[0]
    assert first.startswith("train_gan: step 6/9370000 (0%), 128 images/s, 0:03 elapsed, 1301:23:17 left")


def test_clock():
    assert clock(0) == "0:00" and clock(62.4) == "1:02" and clock(3725) == "1:02:05"
