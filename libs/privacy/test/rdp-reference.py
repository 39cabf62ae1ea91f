"""Independent reference values for libs/privacy/test/rdp.test.ts.

RDP of the sampled Gaussian mechanism straight from its definition (Mironov, Talwar, Zhang 2019, Sec. 3):
    A_a = E_{z ~ N(0, s^2)} [ ((1 - q) + q * exp((2z - 1) / (2 s^2)))^a ],   rdp(a) = log(A_a) / (a - 1)
by numerical integration with mpmath (50 digits), not by the binomial / erfc series the code uses. Then
eps = min over Opacus's default orders of rdp*T - (log d + log a)/(a-1) + log((a-1)/a) (Balle et al. 2020)
and of rdp*T - log(d)/(a-1) (Mironov 2017). Run: python3 libs/privacy/test/rdp-reference.py
"""
import mpmath as mp

mp.mp.dps = 50
ORDERS = [1 + x / 10 for x in range(1, 100)] + list(range(12, 64))


def rdp(q, s, a):
    q, s, a = mp.mpf(q), mp.mpf(s), mp.mpf(a)
    f = lambda z: mp.npdf(z, 0, s) * ((1 - q) + q * mp.exp((2 * z - 1) / (2 * s * s))) ** a
    hi = a + 20 * s
    pts = [-mp.inf, -20 * s] + [(-20 * s) + (hi + 20 * s) * k / 40 for k in range(1, 40)] + [hi, mp.inf]
    return mp.log(mp.quad(f, pts)) / (a - 1)


CASES = [
    ("abadi2016", 0.01, 4.0, 10000, 1e-5),
    ("tfp-mnist", 256 / 60000, 1.1, 14063, 1e-5),
    ("fl-100-clients", 0.1, 1.0, 100, 1e-5),
]
for name, q, s, T, d in CASES:
    r = [rdp(q, s, a) for a in ORDERS]
    def best(conv):
        vals = []
        for a, ra in zip(ORDERS, r):
            a = mp.mpf(a)
            e = ra * T - (mp.log(d) + mp.log(a)) / (a - 1) + mp.log((a - 1) / a) if conv == 'balle' else ra * T - mp.log(d) / (a - 1)
            vals.append((e, a))
        return min(vals)
    eb, ab = best('balle')
    em, am = best('mironov')
    sample = {a: mp.nstr(r[ORDERS.index(a)], 17) for a in (1.5, 2, 2.5, 8, 32, 63)}
    print(name, dict(q=q, sigma=s, T=T, delta=d), 'rdp per step', sample)
    print('  eps balle2020', mp.nstr(eb, 17), 'order', ab, ' eps mironov2017', mp.nstr(em, 17), 'order', am)
