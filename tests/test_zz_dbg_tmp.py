import time, pytest
from components.rtsp import *
@pytest.mark.parametrize("k", range(12))
def test_x(rtsp_server, k):
    s=rtsp_server
    old=open_capture(s.url)
    ok=old.read()[0]
    if not ok:
        print(s.stderr_text()[-30000:])
    assert ok
    old.release()
