"""Render a page of a token-protected Ray dashboard in headless Chromium, as a person sees it.

    python scripts/dashboard_screenshot.py http://127.0.0.1:8265 dashboard.png [--page jobs] [--token-file F]

Opens the dashboard, types the token into its "Authentication Token Required" prompt (the token from
--token-file, else $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token: what `ray get-auth-token`
prints), submits, then opens `#/<page>` (jobs: the sweep's job and its Train/Tune actors; actors;
cluster; overview) and saves a full-page PNG. Ray 2.60's open-source dashboard has no Train page; the
Train run state it serves is at /api/train/v2/runs/v1.

Needs Playwright for Python (`pip install -e .[dashboard]`) and a Chromium (`apt-get install chromium`);
Playwright's own browser download is not used. Exit 2 with one line when the token or the browser is missing.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def read_token(token_file: str | None) -> str:
    """The cluster token, looked up the way Ray's clients do."""
    if token_file:
        return Path(token_file).read_text().strip()
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip()


def screenshot(url: str, out: Path, *, token: str, page_name: str = "jobs", chromium: str = "/usr/bin/chromium",
               timeout_s: float = 60.0) -> Path:
    """Log in through the dashboard's token prompt, open `#/<page_name>`, save a PNG; returns `out`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(f"{url.rstrip('/')}/#/{page_name}")
            page.get_by_placeholder("Enter your authentication token").fill(token)
            page.get_by_role("button", name="Submit").click()
            page.get_by_text("Authentication Token Required").wait_for(state="detached")
            page.goto(f"{url.rstrip('/')}/#/{page_name}")
            page.wait_for_load_state("networkidle")
            page.wait_for_timeout(2000)  # the tables poll their APIs once more
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="dashboard URL, e.g. http://127.0.0.1:8265 (through `ray dashboard` for a cluster)")
    parser.add_argument("out", help="PNG to write")
    parser.add_argument("--page", default="jobs", help="dashboard route: jobs, actors, cluster, overview (default jobs)")
    parser.add_argument("--token-file", default=None, help="file holding the token (default: as Ray's clients find it)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary (default /usr/bin/chromium)")
    args = parser.parse_args(argv)
    try:
        token = read_token(args.token_file)
    except OSError as err:
        print(f"error: no dashboard token ({err.strerror}: {err.filename}); run `ray get-auth-token`", file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(f"error: {args.chromium}: Chromium not found (apt-get install chromium)", file=sys.stderr)
        return 2
    print(screenshot(args.url, Path(args.out), token=token, page_name=args.page, chromium=args.chromium))
    return 0


if __name__ == "__main__":
    sys.exit(main())
