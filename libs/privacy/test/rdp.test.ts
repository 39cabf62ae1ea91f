import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_ORDERS,
  RdpAccountant,
  computeRdp,
  getPrivacySpent,
  logErfc,
  rdpSampledGaussian,
} from '../src/index.js';

/**
 * Reference values, all computed independently of the code under test with mpmath (50 and 30 digits) by numerical
 * integration of the RDP definition of the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019, Sec. 3):
 *   A_a = E_{z ~ N(0, s^2)}[((1 - q) + q exp((2z - 1) / (2 s^2)))^a],  rdp(a) = log(A_a) / (a - 1)
 * (libs/privacy/test/rdp-reference.py; the code uses the binomial and erfc series instead), and one published
 * number: Abadi et al. 2016, "Deep Learning with Differential Privacy", Sec. 3.1: q = 0.01, sigma = 4, T = 10000,
 * delta = 1e-5 gives eps ~ 1.26 with the moments accountant, which is the classic conversion (mironov2017 here).
 * Opacus/TF Privacy could not be run on this machine (no PyPI access, no torch).
 */
const REL = 1e-7; // per-order RDP: quadrature vs series, both ~1e-9 apart in practice
const EPS_REL = 1e-9;

const close = (got: number, want: number, rel: number, what: string): void =>
  assert.ok(Math.abs(got - want) <= rel * Math.abs(want), `${what}: ${got} vs reference ${want}`);

// [q, sigma, order, rdp per step] from mpmath quadrature.
const PER_STEP: [number, number, number, number][] = [
  [0.01, 4, 1.5, 4.83549317563319e-6],
  [0.01, 4, 2, 6.44942509419921e-6],
  [0.01, 4, 2.5, 8.06440975849603e-6],
  [0.01, 4, 8, 2.58991230124043e-5],
  [0.01, 4, 32, 0.000105263606590817],
  [0.01, 4, 63, 0.000211698216568248],
  [256 / 60000, 1.1, 1.5, 1.74797844629243e-5],
  [256 / 60000, 1.1, 2, 2.33957760099492e-5],
  [256 / 60000, 1.1, 2.5, 2.93580702818079e-5],
  [256 / 60000, 1.1, 8.1, 9.96597276193112e-5],
  [256 / 60000, 1.1, 8.8, 0.000108964300759525],
  [256 / 60000, 1.1, 32, 7.59018834621011],
  [256 / 60000, 1.1, 63, 20.4881205771485],
  [0.1, 1, 1.5, 0.0117345921966852],
  [0.1, 1, 2, 0.0170368632361766],
  [0.1, 1, 2.5, 0.0235037272610031],
  [0.1, 1, 3.2, 0.035695054268047],
  [0.1, 1, 3.3, 0.0378815833643929],
  [0.1, 1, 8, 1.37836141134813],
  [0.1, 1, 32, 13.6231379685226],
  [0.1, 1, 63, 29.1602764377641],
];

test('RDP of the sampled Gaussian matches mpmath quadrature of the definition (integer and fractional orders)', () => {
  for (const [q, s, a, want] of PER_STEP) close(rdpSampledGaussian(q, s, a), want, REL, `q=${q} sigma=${s} order=${a}`);
});

test('(eps, delta) matches the references: Abadi et al. 2016 and mpmath, both conversions', () => {
  // Abadi 2016 setting; mpmath minimum over Opacus's default orders (full scan): balle2020 1.0354900660363 at
  // order 17, mironov2017 1.25857474125279 at order 20 (the published moments-accountant value is ~1.26).
  const acc = new RdpAccountant();
  acc.step(0.01, 4, 10000);
  const b = acc.getPrivacySpent(1e-5);
  close(b.epsilon, 1.0354900660363, EPS_REL, 'abadi balle2020');
  assert.equal(b.order, 17);
  const m = acc.getPrivacySpent(1e-5, 'mironov2017');
  close(m.epsilon, 1.25857474125279, EPS_REL, 'abadi mironov2017');
  assert.equal(m.order, 20);
  assert.equal(Math.round(m.epsilon * 100) / 100, 1.26, 'Abadi et al. 2016, Sec. 3.1: eps ~ 1.26');
  // MNIST DP-SGD setting (q = 256/60000, sigma = 1.1, 60 epochs = 14063 steps, delta = 1e-5): mpmath's conversion at
  // the order our scan picks (only those orders integrated: 8.1 and 8.8; the neighbouring orders are larger).
  const mn = getPrivacySpent(DEFAULT_ORDERS, computeRdp(256 / 60000, 1.1, 14063), 1e-5);
  assert.equal(mn.order, 8.1);
  close(mn.epsilon, 2.59665552868092, EPS_REL, 'mnist balle2020');
  const mm = getPrivacySpent(DEFAULT_ORDERS, computeRdp(256 / 60000, 1.1, 14063), 1e-5, 'mironov2017');
  assert.equal(mm.order, 8.8);
  close(mm.epsilon, 3.00838104683379, EPS_REL, 'mnist mironov2017');
  // Cross-device FL round setting: 10 of 100 clients per round, sigma = 1, 100 rounds.
  const fl = new RdpAccountant();
  for (let r = 0; r < 100; r++) fl.step(0.1, 1);
  assert.equal(fl.steps, 100);
  const f = fl.getPrivacySpent(1e-5);
  assert.equal(f.order, 3.2);
  close(f.epsilon, 7.89925500243808, EPS_REL, 'fl balle2020');
  close(fl.getEpsilon(1e-5, 'mironov2017'), 8.79377810381765, EPS_REL, 'fl mironov2017');
});

test('(eps, delta) matches the value TensorFlow Privacy publishes for its MNIST example', () => {
  // tensorflow_privacy/privacy/analysis/compute_dp_sgd_privacy.py (2019), module docstring: "compute_dp_sgd_privacy
  // --N=60000 --batch_size=256 --noise_multiplier=1.12 --epochs=60 --delta=1e-5 ... satisfies (2.92, 1e-5)-DP".
  // That version: steps = ceil(epochs * N / batch_size) = 14063, orders 1.1..10.9 and 12..63 (our DEFAULT_ORDERS),
  // the classic conversion eps = rdp - log(delta) / (order - 1) ('mironov2017').
  const acc = new RdpAccountant();
  acc.step(256 / 60000, 1.12, Math.ceil((60 * 60000) / 256));
  assert.equal(acc.steps, 14063);
  assert.equal(acc.getEpsilon(1e-5, 'mironov2017').toFixed(2), '2.92');
  // The accountant's state survives a checkpoint (JSON) and composes on.
  const back = RdpAccountant.fromState(JSON.parse(JSON.stringify(acc.exportState())));
  assert.equal(back.getEpsilon(1e-5), acc.getEpsilon(1e-5));
  assert.equal(back.steps, 14063);
  assert.throws(() => RdpAccountant.fromState({ orders: [0.5], rdp: [1], steps: 1 }), /accountant state/);
});

test('edge cases: q = 1 is the Gaussian mechanism (a / 2 sigma^2), q = 0 spends nothing, log erfc is accurate', () => {
  close(rdpSampledGaussian(1, 2, 10), 10 / 8, 1e-15, 'q=1');
  assert.equal(rdpSampledGaussian(0, 2, 10), 0);
  assert.equal(rdpSampledGaussian(0.1, 0, 10), Infinity);
  // mpmath log(erfc(x)), 30 digits.
  const ref: [number, number][] = [
    [-3, 0.693136135250447],
    [-1, 0.611232317678071],
    [0.5, -0.735011129837084],
    [2, -5.36494126461664],
    [2.5, -7.80681527272726],
    [4, -17.987778312103],
    [10, -102.879889024845],
    [30, -903.974117110644],
  ];
  for (const [x, want] of ref) close(logErfc(x), want, 1e-13, `logErfc(${x})`);
  assert.throws(() => getPrivacySpent([2], [1], 0), /delta/);
});
