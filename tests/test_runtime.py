"""The process-wide set-up: the oneDNN default per CPU and the filter of TensorFlow's CUDA lines."""

import os
import platform
import re
import threading

from needles_tf import runtime
from needles_tf.bin import native_log


def test_avx512_cpus_get_onednn_ops_off():
    environ = {}
    said = runtime.configure_onednn(environ, frozenset({"avx2", "avx512f", "avx512_bf16"}),
                                    "x86_64")
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "0"} and "AVX-512" in said


def test_other_x86_cpus_get_onednn_ops_off_too():
    environ = {"PATH": "/bin"}
    said = runtime.configure_onednn(environ, frozenset({"avx2", "fma", "avx_vnni"}), "x86_64")
    assert environ == {"PATH": "/bin", "TF_ENABLE_ONEDNN_OPTS": "0"} and "gradients" in said


def test_other_architectures_keep_tensorflows_default():
    environ = {}
    said = runtime.configure_onednn(environ, frozenset({"asimd", "sve"}), "aarch64")
    assert environ == {} and "aarch64" in said


def test_a_users_own_setting_is_kept():
    for chosen in ({"TF_ENABLE_ONEDNN_OPTS": "1"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}):
        environ = dict(chosen)
        said = runtime.configure_onednn(environ, frozenset({"avx512f"}))
        assert environ == chosen and said.startswith("user:")


def test_cpu_flags_from_cpuinfo_and_without_it(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\nbugs\t: none\n")
    assert runtime.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "avx512f"}
    fallback = runtime.cpu_flags(str(tmp_path / "missing"))  # NumPy's runtime table
    assert fallback and all(f == f.lower() for f in fallback)
    if os.path.exists(runtime.CPUINFO) and "sse2" in runtime.cpu_flags():
        assert "sse2" in fallback


def test_this_process_got_the_default_before_tensorflow():
    import needles_tf

    setting = needles_tf.ONEDNN_SETTING
    if not setting.startswith("user") and platform.machine() == "x86_64":
        assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    assert setting


def pumped(chunks: list[bytes]) -> bytes:
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    drop = re.compile(native_log.CUDA_NOISE.pattern + b"|" + native_log.ONEDNN_NOTICE.pattern)
    pump = threading.Thread(target=native_log._pump, args=(read_in, write_out, drop))
    pump.start()
    for chunk in chunks:
        os.write(write_in, chunk)
    os.close(write_in)
    pump.join()
    os.close(write_out)
    with os.fdopen(read_out, "rb") as f:
        return f.read()


def test_the_filter_drops_the_start_up_notices_only():
    noise = [
        (b"WARNING: All log messages before absl::InitializeLog() is called are written to "
         b"STDERR\n"),
        (b"I0000 00:00:1795952614.900533    2270 cudart_stub.cc:31] Could not find cuda drivers "
         b"on your machine, GPU will not be used.\n"),
        (b"E0000 00:00:1795952623.668763    2270 cuda_platform.cc:52] failed call to cuInit: "
         b"INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)\n"),
        (b"I0000 00:00:1795975345.605998   19869 port.cc:153] oneDNN custom operations are on. "
         b"You may see slightly different numerical results due to floating-point round-off "
         b"errors from different computation orders.\n"),
    ]
    kept = [b"E0000 00:00:1795952623.668763    2270 conv_ops.cc:12] a real error\n",
            b"needles-train: error: no such file\n", b"Traceback (most recent call last):\n"]
    assert pumped([noise[0], kept[0], noise[1] + kept[1], noise[2][:20], noise[2][20:],
                   noise[3], kept[2]]) == b"".join(kept)


def test_the_filter_forwards_progress_bars_at_once():
    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    pump = threading.Thread(target=native_log._pump,
                            args=(read_in, write_out, native_log.CUDA_NOISE), daemon=True)
    pump.start()
    os.write(write_in, b"\rwriting:  50%|#####     |")  # no newline yet
    assert os.read(read_out, 100) == b"\rwriting:  50%|#####     |"
    os.close(write_in)
    pump.join()
    for fd in (read_out, write_out):
        os.close(fd)
