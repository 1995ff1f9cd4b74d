// End-to-end tests in headless Chromium: the upload test page, playback with seeking, and
// cross-origin (CORS) playback. run.sh starts the servers and passes their addresses in the
// environment, so this script only drives the browser and checks results.
//
// Each test prints "PASS name" or "FAIL name: reason"; the last line is "N passed, M failed" and
// the exit status is 1 when any test failed.

import { createHash } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import path from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// Bounds for every wait, so a hang fails one test instead of the whole run.
const WAIT_MS = 15_000;
const RUN_LIMIT_MS = 160_000;
const SEEK_TO = 3;
const PLAYED_PAST = 3.5;

const env = readEnvironment([
  "MAIN_URL", "MAIN_VIDEO_DIR", "UPLOAD_TOKEN", "CORS_URL", "PAGE_ORIGIN", "PAGE_DIR", "CLIP", "CHROMIUM_BIN",
]);
let passed = 0;
let failed = 0;

function readEnvironment(names) {
  const values = {};
  for (const name of names) {
    if (!process.env[name]) {
      console.error(`testpage.mjs: environment variable ${name} is missing; start the tests with tests/browser/run.sh`);
      process.exit(2);
    }
    values[name] = process.env[name];
  }
  return values;
}

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

async function test(name, body) {
  try {
    await body();
    passed += 1;
    console.log(`PASS ${name}`);
  } catch (error) {
    failed += 1;
    console.log(`FAIL ${name}: ${error.message.split("\n")[0]}`);
  }
}

function sha256(bytes) {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Clicks #upload, waits until the page reports success or failure, and returns #status. */
async function clickUploadAndWait(page) {
  await page.click("#upload");
  await page.waitForFunction(
    () => !document.querySelector("#upload").disabled && document.querySelector("#status").className !== "",
    null,
    { timeout: WAIT_MS },
  );
  return page.evaluate(() => ({
    text: document.querySelector("#status").textContent,
    kind: document.querySelector("#status").className,
  }));
}

/** Collects the page's media responses, so tests can check that players used Range requests. */
function recordMediaResponses(page) {
  const responses = [];
  page.on("response", (response) => {
    if (response.request().resourceType() === "media") {
      responses.push(response);
    }
  });
  return responses;
}

/** Checks that some media response for `url` was a 206 response to a Range request. */
function checkRangeResponse(responses, url, size) {
  const seen = responses.filter((r) => r.url() === url).map((r) => `${r.status()} ${r.headers()["content-range"] ?? "-"}`);
  const ranged = responses.some((r) => r.url() === url
    && r.request().headers().range !== undefined
    && r.status() === 206
    && r.headers()["accept-ranges"] === "bytes"
    && (r.headers()["content-range"] ?? "").endsWith(`/${size}`));
  check(ranged, `no 206 response to a Range request for ${url}; media responses seen: ${seen.join(", ") || "none"}`);
}

/**
 * Waits for the video to have data for playback, plays it muted, seeks to SEEK_TO and waits
 * until currentTime passes PLAYED_PAST.
 */
async function playAndSeek(page, selector) {
  const ready = await page.waitForFunction(
    (sel) => document.querySelector(sel).readyState >= 3 || document.querySelector(sel).error,
    selector,
    { timeout: WAIT_MS },
  ).then(() => true, () => false);
  const state = await page.evaluate((sel) => {
    const video = document.querySelector(sel);
    return { readyState: video.readyState, error: video.error && `${video.error.code} ${video.error.message}` };
  }, selector);
  check(!state.error, `the video reported a media error: ${state.error}`);
  check(ready, `readyState stayed at ${state.readyState} for ${WAIT_MS} ms`);

  await page.evaluate(async ([sel, seekTo]) => {
    const video = document.querySelector(sel);
    video.muted = true;
    await video.play();
    video.currentTime = seekTo;
  }, [selector, SEEK_TO]);

  const passedMark = await page.waitForFunction(
    ([sel, mark]) => document.querySelector(sel).currentTime > mark,
    [selector, PLAYED_PAST],
    { timeout: WAIT_MS },
  ).then(() => true, () => false);
  const currentTime = await page.evaluate((sel) => document.querySelector(sel).currentTime, selector);
  check(passedMark, `currentTime is ${currentTime}, expected past ${PLAYED_PAST} within ${WAIT_MS} ms of seeking to ${SEEK_TO}`);
}

async function testPageTests(browser, clip) {
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const mediaResponses = recordMediaResponses(page);
  const pickedName = ".big buck bunny (1).mp4";
  const expectedId = "big_buck_bunny__1_.mp4";
  let uploaded = false;

  await test("test page loads", async () => {
    const response = await page.goto(`${env.MAIN_URL}/testpage`);
    check(response.status() === 200, `GET /testpage returned ${response.status()}`);
    for (const id of ["file", "video-id", "token", "overwrite", "upload", "progress", "status", "player", "play-id", "play"]) {
      check(await page.locator(`#${id}`).count() === 1, `element #${id} is missing`);
    }
  });

  await test("video id defaults to sanitised file name", async () => {
    await page.setInputFiles("#file", { name: pickedName, mimeType: "video/mp4", buffer: clip });
    const id = await page.inputValue("#video-id");
    check(id === expectedId, `#video-id is ${JSON.stringify(id)}, expected ${JSON.stringify(expectedId)}`);
  });

  await test("upload without valid token shows 401", async () => {
    for (const token of ["", "wrong-token-0123456789"]) {
      await page.fill("#token", token);
      const status = await clickUploadAndWait(page);
      check(status.kind === "error", `with token ${JSON.stringify(token)}, #status is ${JSON.stringify(status.text)}`);
      check(status.text.includes("(unauthorized, HTTP 401)"), `with token ${JSON.stringify(token)}, #status ${JSON.stringify(status.text)} lacks the 401 code`);
    }
  });

  await test("upload through page succeeds", async () => {
    await page.fill("#token", env.UPLOAD_TOKEN);
    const status = await clickUploadAndWait(page);
    check(status.kind === "ok", `#status is ${JSON.stringify(status.text)}`);
    check(status.text.includes(`${clip.length} bytes`), `#status does not give the size ${clip.length}: ${JSON.stringify(status.text)}`);
    const progress = await page.evaluate(() => [document.querySelector("#progress").value, document.querySelector("#percent").textContent]);
    check(progress[0] === 1 && progress[1] === "100%", `progress shows ${progress[0]} and ${progress[1]}, expected 1 and 100%`);
    const src = await page.evaluate(() => document.querySelector("#player").getAttribute("src"));
    check(src === `/videos/${expectedId}`, `#player src is ${JSON.stringify(src)}`);
    uploaded = true;
  });

  await test("stored video is byte-identical", async () => {
    check(uploaded, "the upload failed, so there is nothing to compare");
    const onDisk = await readFile(path.join(env.MAIN_VIDEO_DIR, expectedId));
    check(sha256(onDisk) === sha256(clip), `the file on disk (${onDisk.length} bytes) differs from the clip (${clip.length} bytes)`);

    const response = await fetch(`${env.MAIN_URL}/videos/${expectedId}`, { signal: AbortSignal.timeout(WAIT_MS) });
    const served = Buffer.from(await response.arrayBuffer());
    check(response.status === 200, `GET /videos/${expectedId} returned ${response.status}`);
    check(sha256(served) === sha256(clip), `GET returned ${served.length} bytes that differ from the clip`);
  });

  await test("player plays and seeks", async () => {
    await playAndSeek(page, "#player");
    await page.evaluate(() => document.querySelector("#player").pause());
    if (process.env.TESTPAGE_SCREENSHOT) {
      await page.screenshot({ path: process.env.TESTPAGE_SCREENSHOT, fullPage: true });
    }
  });

  await test("player uses Range requests", async () => {
    checkRangeResponse(mediaResponses, `${env.MAIN_URL}/videos/${expectedId}`, clip.length);
  });

  await test("second upload without overwrite shows 409", async () => {
    const status = await clickUploadAndWait(page);
    check(status.kind === "error", `#status is ${JSON.stringify(status.text)}, expected an error`);
    for (const part of ["already exists", "video_exists", "HTTP 409"]) {
      check(status.text.includes(part), `#status ${JSON.stringify(status.text)} lacks ${JSON.stringify(part)}`);
    }
  });

  await test("upload with overwrite succeeds", async () => {
    await page.check("#overwrite");
    const requestEvent = page.waitForRequest((r) => r.method() === "POST", { timeout: WAIT_MS });
    const status = await clickUploadAndWait(page);
    const request = await requestEvent;
    await page.uncheck("#overwrite");

    check(status.kind === "ok", `#status is ${JSON.stringify(status.text)}`);
    check(request.url().endsWith("?overwrite=true"), `the upload went to ${request.url()}`);
    check(request.headers().authorization === `Bearer ${env.UPLOAD_TOKEN}`, "the upload did not send the token as a Bearer Authorization header");
  });

  await test("play button plays stored id", async () => {
    await page.fill("#play-id", expectedId);
    await page.click("#play");
    await playAndSeek(page, "#player");
    await page.evaluate(() => document.querySelector("#player").pause());
  });

  await test("play button shows not-found error", async () => {
    await page.fill("#play-id", "no-such-video.mp4");
    await page.click("#play");
    await page.waitForFunction(() => document.querySelector("#status").className === "error", null, { timeout: WAIT_MS });
    const text = await page.textContent("#status");
    check(text.includes("video_not_found"), `#status ${JSON.stringify(text)} lacks video_not_found`);
  });

  await page.close();
}

/** Stores the clip on a server through the API, as the page's upload would. */
async function uploadFromNode(baseUrl, id, clip, token) {
  const form = new FormData();
  form.append("file", new Blob([clip], { type: "video/mp4" }), "clip.mp4");
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const response = await fetch(`${baseUrl}/upload/${id}`, {
    method: "POST",
    headers,
    body: form,
    signal: AbortSignal.timeout(WAIT_MS),
  });
  const body = await response.text();
  check(response.status === 201, `POST ${baseUrl}/upload/${id} returned ${response.status}: ${body}`);
}

async function corsTests(browser, clip) {
  const id = "cors-clip.mp4";
  const allowedUrl = `${env.CORS_URL}/videos/${id}`;
  const blockedUrl = `${env.MAIN_URL}/videos/${id}`;
  await writeFile(
    path.join(env.PAGE_DIR, "cors.html"),
    `<!doctype html>
<meta charset="utf-8">
<title>cross-origin player</title>
<video id="remote" crossorigin="anonymous" muted preload="auto" controls src="${allowedUrl}"></video>
`,
  );
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT_MS);
  const mediaResponses = recordMediaResponses(page);

  await test("cross-origin video plays and seeks", async () => {
    await uploadFromNode(env.CORS_URL, id, clip);
    await uploadFromNode(env.MAIN_URL, id, clip, env.UPLOAD_TOKEN);
    const response = await page.goto(`${env.PAGE_ORIGIN}/cors.html`);
    check(response.status() === 200, `GET ${env.PAGE_ORIGIN}/cors.html returned ${response.status()}`);
    await playAndSeek(page, "#remote");
    checkRangeResponse(mediaResponses, allowedUrl, clip.length);
  });

  await test("cross-origin fetch reads exposed headers", async () => {
    const result = await page.evaluate(async (url) => {
      const response = await fetch(url, { headers: { Range: "bytes=0-99" }, cache: "no-store" });
      const body = await response.arrayBuffer();
      return { status: response.status, contentRange: response.headers.get("content-range"), length: body.byteLength };
    }, allowedUrl);
    check(result.status === 206, `fetch returned ${result.status}, expected 206`);
    check(result.contentRange === `bytes 0-99/${clip.length}`, `Content-Range is ${JSON.stringify(result.contentRange)}`);
    check(result.length === 100, `the body has ${result.length} bytes, expected 100`);
  });

  await test("fetch from unlisted origin is blocked", async () => {
    const outcome = await page.evaluate(async (url) => {
      try {
        const response = await fetch(url, { cache: "no-store" });
        return `fetch succeeded with status ${response.status}`;
      } catch (error) {
        return `blocked: ${error.name}`;
      }
    }, blockedUrl);
    check(outcome === "blocked: TypeError", `fetch of ${blockedUrl} from ${env.PAGE_ORIGIN}: ${outcome}`);
  });

  await test("video from unlisted origin fails", async () => {
    const outcome = await page.evaluate(async ([url, waitMs]) => {
      const video = document.createElement("video");
      video.crossOrigin = "anonymous";
      video.muted = true;
      const settled = new Promise((resolve) => {
        video.addEventListener("error", () => resolve(`error ${video.error.code}`));
        video.addEventListener("loadeddata", () => resolve("loaded"));
        setTimeout(() => resolve("no event"), waitMs);
      });
      video.src = url;
      document.body.append(video);
      return settled;
    }, [blockedUrl, WAIT_MS - 2_000]);
    check(outcome.startsWith("error"), `a crossorigin video from ${blockedUrl} gave ${outcome}, expected an error`);
  });

  await page.close();
}

async function main() {
  const watchdog = setTimeout(() => {
    console.log(`FAIL run: not finished within ${RUN_LIMIT_MS / 1000} s`);
    console.log(`${passed} passed, ${failed + 1} failed`);
    process.exit(1);
  }, RUN_LIMIT_MS);
  watchdog.unref();

  const clip = await readFile(env.CLIP);
  const browser = await chromium.launch({
    executablePath: env.CHROMIUM_BIN,
    args: CHROMIUM_FLAGS,
    timeout: WAIT_MS,
  });
  try {
    await testPageTests(browser, clip);
    await corsTests(browser, clip);
  } finally {
    await browser.close();
  }

  console.log(`${passed} passed, ${failed} failed`);
  process.exitCode = failed === 0 ? 0 : 1;
}

main().catch((error) => {
  console.log(`FAIL run: ${error.message}`);
  console.log(`${passed} passed, ${failed + 1} failed`);
  process.exit(1);
});
