"""The benchmark's renderer part leaves out the dense form's forward+backward when told to (bench/run.py does on
GPUs, where XLA did not finish compiling it)."""

from bench import render as render_bench


def test_renderer_measure_without_the_dense_backward():
    full = render_bench.measure(size=16, points=5, batch=2, seconds=0.01)
    short = render_bench.measure(size=16, points=5, batch=2, seconds=0.01, dense_backward=False)
    assert {"dense_forward_backward_images_per_s", "ratio_forward_backward"} <= set(full)
    assert set(full) - set(short) == {"dense_forward_backward_images_per_s", "ratio_forward_backward"}
    assert short["ratio_forward"] > 0 and short["separable_forward_backward_images_per_s"] > 0
