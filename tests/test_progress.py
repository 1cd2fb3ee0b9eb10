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
    assert len(lines) == 6  # steps 20, 40, 60, 80, 100 by the clock, then done()
    assert lines[0] == ("train_gan: step 20/100 (20%), 256 images/s, 0:10 elapsed, 0:40 left, "
                        "loss_d 0.05")
    assert lines[-1].startswith("train_gan: step 100/100 (100%), 256 images/s, 0:50 elapsed, 0:00 left")


def test_rate_of_a_resumed_run_counts_only_its_own_steps():
    timer, out = FakeClock(), io.StringIO()
    progress = Progress("train_gan", total=1000, per_step=10, every=10, stream=out, timer=timer)
    timer.now += 10
    progress.update(501)  # resumed at step 500: one step in 10 s
    assert "step 501/1000 (50%), 1 images/s" in out.getvalue()
    assert "1:23:10 left" in out.getvalue()  # 499 steps at 10 s each


def test_clock():
    assert clock(0) == "0:00" and clock(62.4) == "1:02" and clock(3725) == "1:02:05"
