//! Builds one metric family at a time, from its declaration.

use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

use super::{NS, all};

/// Builds one metric family at a time.
pub(super) struct Family {
    pub(super) mf: MetricFamily,
    labels: &'static [&'static str],
}

impl Family {
    pub(super) fn new(name: &'static str) -> Family {
        let (n, help, kind, labels) = all()
            .find(|f| f.0 == name)
            .copied()
            .unwrap_or_else(|| unreachable!("family {name} is declared in a FAMILIES table"));
        let mut mf = MetricFamily::default();
        mf.set_name(format!("{NS}{n}"));
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Family { mf, labels }
    }

    fn labelled(&self, values: &[&str]) -> proto::Metric {
        debug_assert_eq!(values.len(), self.labels.len());
        let pairs = self
            .labels
            .iter()
            .zip(values)
            .map(|(n, v)| {
                let mut p = LabelPair::default();
                p.set_name((*n).to_owned());
                p.set_value((*v).to_owned());
                p
            })
            .collect();
        let mut m = proto::Metric::default();
        m.set_label(pairs);
        m
    }

    pub(super) fn value(&mut self, values: &[&str], v: f64) {
        let m = self.labelled(values);
        self.push(m, v);
    }

    /// A value whose last label is called `last` rather than as declared:
    /// the label that names N is `day`, `week` or `month` by the
    /// definition's granularity.
    pub(super) fn value_as(&mut self, last: &str, values: &[&str], v: f64) {
        let mut m = self.labelled(values);
        if let Some(pair) = m.mut_label().last_mut() {
            pair.set_name(last.to_owned());
        }
        self.push(m, v);
    }

    fn push(&mut self, mut m: proto::Metric, v: f64) {
        match self.mf.get_field_type() {
            MetricType::COUNTER => {
                let mut c = proto::Counter::default();
                c.set_value(v);
                m.set_counter(c);
            }
            _ => {
                let mut g = proto::Gauge::default();
                g.set_value(v);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
    }

    pub(super) fn summary(&mut self, values: &[&str], quantiles: &[(f64, f64)], sum: f64, count: u64) {
        let mut m = self.labelled(values);
        let mut s = proto::Summary::default();
        s.set_sample_count(count);
        s.set_sample_sum(sum);
        s.set_quantile(
            quantiles
                .iter()
                .map(|&(q, v)| {
                    let mut p = proto::Quantile::default();
                    p.set_quantile(q);
                    p.set_value(v);
                    p
                })
                .collect(),
        );
        m.set_summary(s);
        self.mf.mut_metric().push(m);
    }
}
