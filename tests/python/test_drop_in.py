"""Existing flash_attn code runs by changing only its import line."""
import os
import subprocess
import sys

import attnforge

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "flash_attn_user_script.py")
ORIGINAL_IMPORT = "from flash_attn import flash_attn_func, flash_attn_varlen_qkvpacked_func, flash_attn_with_kvcache"
SWAPPED_IMPORT = ("from attnforge.flash_attn_interface import flash_attn_func, flash_attn_varlen_qkvpacked_func, "
                  "flash_attn_with_kvcache")


def test_flash_attn_script_with_only_the_import_changed(tmp_path):
    source = open(SCRIPT).read()
    assert source.count(ORIGINAL_IMPORT) == 1
    swapped = source.replace(ORIGINAL_IMPORT, SWAPPED_IMPORT)
    changed = [(a, b) for a, b in zip(source.splitlines(), swapped.splitlines()) if a != b]
    assert len(changed) == 1, "only the import line may differ"
    path = tmp_path / "user_script.py"
    path.write_text(swapped)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(attnforge.__file__)),
                                         env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "flash_attn script OK" in result.stdout
