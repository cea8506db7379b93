"""Where one ``POST /search`` of a vector spends its time, layer by layer, on one IVF-PQ gallery.

    python benchmarks/serve_profile.py --n 100000            # about a minute
    PYTHONPATH=path/to/other/checkout python benchmarks/serve_profile.py --n 100000   # the same spans of other code

Each span is the median over ``--queries`` queries, one at a time, each layer containing the one above it:

1. faiss ``index.search`` with k = 10; then with the gallery's re-ranking depth plus the exact re-ranking;
2. the library's ``search_gallery`` (admission, prefix rule, ranking, ids and labels);
3. ``GalleryService.search`` (the served name resolved, the vector checked, the answer's dict);
4. the ASGI app called in this process (routing, JSON parsing and validation, thread hops, JSON encoding);
5. over HTTP: ``bt2 serve``'s app in a subprocess (uvicorn on 127.0.0.1, each ``--uvicorn`` setting) and one keep-alive client in this process, raw
   HTTP/1.1 on a socket, then httpx: round-trip p50, and the CPU seconds per request of the server process and of
   the client (read from ``/proc``, so other jobs on the machine do not count);
6. the floor of that: the same uvicorn settings answering one fixed search answer without searching (HTTP over
   loopback, uvicorn's protocol and the event loop alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the 1M benchmark's synthetic embeddings (this folder is on sys.path when a benchmark runs as a script)
from gallery_scale import mixture


def median_ms(function, arguments, repeats: int = 3) -> float:
    """The median milliseconds of ``function(argument)`` over the arguments, the best of ``repeats`` passes."""
    for argument in arguments[:20]:
        function(argument)
    best = []
    for _ in range(repeats):
        timings = []
        for argument in arguments:
            started = time.perf_counter()
            function(argument)
            timings.append(time.perf_counter() - started)
        best.append(float(np.median(timings)) * 1000)
    return min(best)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


LOOP = asyncio.new_event_loop()


def asgi_call(app, body: bytes) -> None:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/search", "raw_path": b"/search", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"the app answered {message['status']}")

    LOOP.run_until_complete(app(scope, receive, send))


# `bt2 serve`'s app and uvicorn settings, with uvicorn's HTTP parser and event loop chosen
SERVER = """
import sys, uvicorn
from bt2_hf.serving import GalleryService, create_app
root, port, http, loop = sys.argv[1:]
uvicorn.run(create_app(GalleryService(root)), host="127.0.0.1", port=int(port), http=http, loop=loop,
            log_level="warning", access_log=False)
"""


# The floor: the same uvicorn settings answering every request with one fixed search answer, searching nothing. What
# HTTP over loopback, uvicorn's protocol and the event loop cost alone, whatever the app.
FLOOR_SERVER = """
import sys, uvicorn
root, port, http, loop, answer_file = sys.argv[1:]
answer = open(answer_file, "rb").read()
headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
uvicorn.run(app, host="127.0.0.1", port=int(port), http=http, loop=loop, log_level="warning", access_log=False)
"""


def over_http(root: Path, bodies: list[bytes], repeats: int, http: str = "auto", loop: str = "auto",
              floor_answer: Path | None = None) -> dict:  # fmt: skip
    port = _free_port()
    # (run from the gallery root's folder: ``-c`` puts the working directory first on sys.path, and the code measured
    # is the one this script imported)
    code = str(Path(__import__("bt2_hf").__file__).parents[1])
    script, extra = (SERVER, []) if floor_answer is None else (FLOOR_SERVER, [str(floor_answer)])
    server = subprocess.Popen([sys.executable, "-c", script, str(root), str(port), http, loop, *extra],
                              cwd=root.parent, env=dict(os.environ, PYTHONPATH=code), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                connection = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("bt2 serve did not start") from None
                time.sleep(0.2)
        stream = connection.makefile("rb")

        def ask(body: bytes) -> None:
            connection.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
            status, length = int(stream.readline().split()[1]), 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            stream.read(length)
            if status != 200:
                raise RuntimeError(f"the service answered {status}")

        import httpx

        session = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        payloads = [json.loads(body) for body in bodies]
        results = {}
        for name, function, arguments in (("raw socket", ask, bodies),
                                          ("httpx", lambda p: session.post("/search", json=p).json(), payloads)):  # fmt: skip
            function(arguments[0])
            server_cpu, client_cpu = cpu_seconds(server.pid), time.process_time()
            p50 = median_ms(function, arguments, repeats)
            count = (len(arguments) + 20) * repeats
            results[name] = {"p50_ms": p50, "server_cpu_ms": 1000 * (cpu_seconds(server.pid) - server_cpu) / count,
                             "client_cpu_ms": 1000 * (time.process_time() - client_cpu) / count}  # fmt: skip
        session.close()
        connection.close()
        return results
    finally:
        server.terminate()
        server.wait(30)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="gallery size")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the queries; the best median is kept")
    parser.add_argument("--uvicorn", default="auto/auto,h11/asyncio",
                        help="uvicorn's HTTP parser / event loop settings to measure (auto: httptools and uvloop "
                        "when installed)")  # fmt: skip
    parser.add_argument("--output", help="write the spans as JSON here")
    args = parser.parse_args(argv)

    import bt2_hf
    from bt2_hf.galleries import FaissGallery, search_gallery
    from bt2_hf.galleries.faiss_store import exact_scores
    from bt2_hf.retrieval.knn import import_faiss
    from bt2_hf.serving import GalleryService, create_app

    work = Path(tempfile.mkdtemp(prefix="bt2-serve-profile-"))
    try:
        root = work / "galleries"
        root.mkdir()
        encoder = {"fingerprint": "sha256:" + "0a" * 32, "name_or_path": "old", "embedding_dim": args.dim}
        FaissGallery.build(root / "bench", mixture(args.n, args.dim, 1000, seed=0), encoder=encoder,
                           index_type="ivfpq")  # fmt: skip
        rng = np.random.default_rng(7)
        queries = mixture(args.queries, args.dim, 1000, seed=0)
        queries = queries + 0.05 * rng.normal(size=queries.shape).astype(np.float32)
        blocks = [np.ascontiguousarray(query[None, :], dtype=np.float32) for query in queries]
        vectors = [query.tolist() for query in queries]
        bodies = [json.dumps({"gallery": "bench", "k": 10, "vector": vector}).encode() for vector in vectors]

        service = GalleryService(root, resume_jobs=False)
        store = service.served("bench")[1].store
        faiss = import_faiss()
        faiss.omp_set_num_threads(1)  # one query at a time: as the service searches
        params = store.manifest["index"]["params"]
        faiss.extract_index_ivf(store.index).nprobe = int(params["nprobe"])
        config = service._encoder_as_query(store)
        depth = int(params["rerank"])

        def reranked(block):
            _, rows = store.index.search(block, depth)
            exact_scores(store.vectors, block, rows)

        app = create_app(service)
        spans = {"code": str(Path(bt2_hf.__file__).parents[1]), "n": args.n, "dim": args.dim,
                 "faiss_k10_ms": median_ms(lambda b: store.index.search(b, 10), blocks, args.repeats),
                 "faiss_reranked_ms": median_ms(reranked, blocks, args.repeats),
                 "search_gallery_ms": median_ms(lambda b: search_gallery(store, b, k=10, query_config=config), blocks,
                                                args.repeats),
                 "service_search_ms": median_ms(lambda v: service.search("bench", k=10, vector=v), vectors,
                                                args.repeats),
                 "asgi_app_ms": median_ms(lambda body: asgi_call(app, body), bodies, args.repeats)}  # fmt: skip
        answer = work / "answer.json"
        answer.write_bytes(json.dumps(service.search("bench", k=10, vector=vectors[0])).encode())
        for setting in args.uvicorn.split(","):
            http, loop = setting.split("/")
            spans[f"http ({setting})"] = over_http(root, bodies, args.repeats, http, loop)
            spans[f"http floor ({setting}): a fixed answer, no search"] = over_http(root, bodies, args.repeats, http,
                                                                                   loop, floor_answer=answer)  # fmt: skip
        print(json.dumps(spans, indent=1))
        if args.output:
            Path(args.output).write_text(json.dumps(spans, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
