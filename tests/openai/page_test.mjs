// The chat page of a running `kiln serve` in headless Chromium (Debian's, driven by
// playwright-core): loads `/`, shows the model name, sends a message typed into the page,
// streams the reply, reports tokens/s, and saves a screenshot after the reply.
// Usage: node page_test.mjs BASE_URL API_KEY SCREENSHOT_PATH
import { chromium } from "playwright-core";
import OpenAI from "openai";

const [base, key, screenshot] = process.argv.slice(2);
let failures = 0;
function check(name, ok, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? ": " + detail : ""}`);
  if (!ok) failures++;
}
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"] });
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  await page.goto(`${base}/?max_tokens=12&temperature=0`);
  await page.fill("#key", key);
  await page.waitForFunction(() => document.getElementById("model").textContent === "tinycoder", null, { timeout: 30000 });
  check("model name shown", true);
  await page.fill("#input", "def add(a, b):");
  await page.click("#send");
  await page.waitForSelector('.msg.assistant[data-done="true"]', { timeout: 30000 });
  const reply = await page.textContent(".msg.assistant");
  const stats = await page.textContent("#stats");
  // The same request through the API gives the same text (greedy).
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
  const api = await client.chat.completions.create({ model: "tinycoder", max_tokens: 12, temperature: 0,
    messages: [{ role: "user", content: "def add(a, b):" }] });
  check("reply streamed into the page", reply.length > 0 && reply === api.choices[0].message.content,
    JSON.stringify(reply));
  check("tokens/s shown", /^\d+ tokens, [\d.]+ tokens\/s$/.test(stats), stats);
  await page.screenshot({ path: screenshot });
  check("screenshot after the reply", true, screenshot);
  // Stop: a long reply stopped from the page ends and the page stays usable.
  await page.goto(`${base}/?max_tokens=900&temperature=0`);
  await page.fill("#key", key);
  await page.fill("#input", "def add(a, b):");  // tinycoder never ends this reply by itself
  await page.click("#send");
  await page.waitForFunction(() => document.querySelector(".msg.assistant")?.textContent.length > 0, null, { timeout: 30000 });
  await page.click("#stop");
  await page.waitForSelector('.msg.assistant[data-done="stopped"]', { timeout: 30000 });
  check("stop button ends the reply", !(await page.isDisabled("#send")));
} catch (e) {
  check("page", false, String(e));
} finally {
  await browser.close();
}
console.log(failures ? `${failures} checks failed` : "all checks passed");
process.exit(failures ? 1 : 0);
