# Prints the GPU sessions, queries and NVML usage joins from a sensor JSON stream.
import json, sys, collections
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ioctls = collections.Counter(e["pid"] for e in ev if e.get("kind") == "gpu_ioctl")
usage = collections.defaultdict(list)
for e in ev:
    if e.get("kind") == "gpu_usage":
        usage[e["pid"]].append(e["sm_util"])
for e in ev:
    k = e.get("kind")
    if k in ("gpu_session_start", "gpu_session_end", "gpu_query"):
        print(f'{k:18} pid={e["pid"]} exe={e.get("exe")} argv={" ".join(e["argv"])[:80]!r}')
        print(f'{"":18} gpu_minors={e["gpu_minors"]} trigger={e.get("trigger")} ioctls={e["ioctls"]} '
              f'failed={e["failed_ioctls"]} duration_s={e.get("duration_s")} '
              f'sm_max={e.get("sm_util_max")} sm_mean={e.get("sm_util_mean")}')
        print(f'{"":18} classes={",".join(e["classes"])}')
for pid, sm in usage.items():
    print(f"gpu_usage pid={pid} samples={len(sm)} sm_util={sm}")
print("gpu_ioctl events by pid:", dict(ioctls))
loss = [e for e in ev if e.get("kind") == "loss"]
if loss:
    l = loss[-1]
    print("loss: kernel_dropped_total", l["kernel_dropped_total"], "user_dropped", l["user_dropped"])
