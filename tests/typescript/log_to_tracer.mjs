// The reference's TypeScript SDK (the `braintrust` npm package, unmodified) logging to
// `tracer serve`: BRAINTRUST_API_URL / BRAINTRUST_APP_URL / BRAINTRUST_API_KEY in the
// environment point at it. Run by tests/test_braintrust_clients.py when TRACER_TS_SDK_DIR names
// a directory where `npm install braintrust` was run. Prints what the test needs as JSON.
import { Attachment, flush, init, initLogger, traced } from "braintrust";

const project = process.argv[2];
const logger = initLogger({ projectName: project });
await traced(async (span) => {
  span.log({ input: { q: "hi" }, metadata: { lang: "ts" } });
  const inner = await traced(async (child) => {
    child.log({ output: "inner", metrics: { tokens: 3 } });
    return 2;
  }, { name: "inner", type: "tool" });
  span.log({ output: inner, scores: { s: 1 } });
}, { name: "outer", type: "llm" });
try {
  await traced(async () => { throw new Error("boom"); }, { name: "fails" });
} catch (e) {
  // logged on the span
}
const file = new Attachment({
  data: new Blob([Buffer.from("hello from ts")]), filename: "h.txt", contentType: "text/plain",
});
logger.traced((span) => span.log({ input: { file } }), { name: "files" });
await logger.flush();
const experiment = init({ project, experiment: "ts-experiment" });
experiment.traced((span) => span.log({ input: 1, output: 2, expected: 2, scores: { acc: 1 } }),
  { name: "case" });
const summary = await experiment.summarize();
await flush();
console.log(JSON.stringify({ key: file.reference.key, scores: summary.scores }));
