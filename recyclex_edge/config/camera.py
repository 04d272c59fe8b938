from __future__ import annotations

from pydantic import Field

from recyclex_edge.config.base import Section


class CameraConfig(Section):
    """Where frames come from."""

    source: str = Field(
        "none",
        min_length=1,
        description=(
            "'none'; 'picamera2'; 'replay:<folder of item photos>'; or anything OpenCV opens: "
            "a device index ('0'), a device path, an RTSP/HTTP URL or a video file."
        ),
    )
    width: int = Field(640, ge=64, le=4096, description="Requested frame width in pixels.")
    height: int = Field(480, ge=48, le=4096, description="Requested frame height in pixels.")
    fps: float = Field(15.0, gt=0, le=120, description="Requested frame rate.")
    loop: bool = Field(True, description="Loop a video file or replay folder when it ends.")
    stall_timeout_s: float = Field(
        5.0, gt=0, le=300, description="No fresh frame for this long: close and reopen the source."
    )
