// A roomy-agent as Node's @grpc/grpc-js (the pure-JavaScript gRPC stack
// behind Node tooling) sees it, over one target (a unix socket by default):
// health Check -> SERVING, Inspect of a sim container from roomy.proto, a
// shrink and an unknown container refused with their codes and Roomy's
// text, and the size unchanged after. Prints PASS/FAIL lines; exits 1 on a
// failure.   node grpc-js-test.js TARGET PROTO_DIR LABEL
'use strict';
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [target, protoDir, label] = process.argv.slice(2);
const deadline = () => new Date(Date.now() + 5000);
const pkg = grpc.loadPackageDefinition(
  loader.loadSync('roomy.proto', { includeDirs: [protoDir], keepCase: true, longs: Number }));
const agent = new pkg.roomy.v1.Agent(target, grpc.credentials.createInsecure());
let failed = 0;
const report = (name, why) => {
  if (why) failed++;
  console.log(why ? `FAIL [${label}] ${name}: ${why}` : `PASS [${label}] ${name}`);
};
const call = (method, req) => new Promise((resolve) =>
  agent[method](req, { deadline: deadline() }, (err, res) => resolve({ err, res })));

(async () => {
  // Health without its .proto: an empty request, SERVING is field 1 = 1.
  const health = await new Promise((resolve) => agent.makeUnaryRequest(
    '/grpc.health.v1.Health/Check', () => Buffer.alloc(0), (b) => b, {}, { deadline: deadline() },
    (err, res) => resolve({ err, res })));
  report('health Check: SERVING', health.err ? `${health.err.code}: ${health.err.details}`
    : (Buffer.compare(health.res, Buffer.from([8, 1])) === 0 ? null : `answer ${health.res.toString('hex')}`));

  const size = async () => {
    const { err, res } = await call('Inspect', { container: 'c0' });
    if (err) throw new Error(`${err.code}: ${err.details}`);
    return res.containers[0].table_size_bytes;
  };
  let before;
  try {
    before = await size();
    report('Inspect c0', before > 0 ? null : `table_size_bytes ${before}`);
  } catch (e) {
    report('Inspect c0', e.message);
  }
  const refused = async (name, req, code, text) => {
    const { err } = await call('Resize', req);
    if (!err) return report(name, 'accepted');
    report(name, err.code !== code ? `code ${err.code}: ${err.details}, want ${code}`
      : (err.details.includes(text) ? null : `message ${JSON.stringify(err.details)} lacks ${text}`));
  };
  await refused('Resize c0 1G (a shrink) refused: INVALID_ARGUMENT',
    { container: 'c0', size: '1G' }, grpc.status.INVALID_ARGUMENT, 'Roomy only grows');
  await refused('Resize of an unknown container refused: NOT_FOUND',
    { container: 'no-such-container', size: '+1G' }, grpc.status.NOT_FOUND, 'no container "no-such-container"');
  try {
    const after = await size();
    report("the refused resizes left c0's size as it was", after === before ? null : `${before} -> ${after}`);
  } catch (e) {
    report("the refused resizes left c0's size as it was", e.message);
  }
  agent.close();
  process.exit(failed ? 1 : 0);
})();
