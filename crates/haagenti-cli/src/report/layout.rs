//! Where the lineage graph's nodes go: a circle whose circumference grows with the nodes,
//! ordered so related models sit next to each other. Deterministic, and no two nodes
//! overlap whatever their number and sizes (see [`circle`]).

use std::collections::BTreeMap;
use std::f64::consts::{PI, TAU};

/// The circle of a few models is drawn this large anyway, for room between the edges.
const MIN_RADIUS: f64 = 170.0;

/// A placed node: centre and the angle of its position on the circle (radians, 0 to the
/// right, clockwise in SVG's downward y).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub angle: f64,
}

/// Nodes placed on a circle around (`centre`, `centre`).
#[derive(Clone, Debug)]
pub struct Circle {
    /// One per node, in the nodes' order (not the circle's).
    pub points: Vec<Point>,
    pub centre: f64,
    pub radius: f64,
}

/// The order of the nodes around the circle: connected components (largest total size
/// first), each walked depth-first from its largest node, the heaviest edge first, so a
/// model's closest relatives follow it (breadth-first would put a hub's neighbours first
/// and their own relatives far away). `sizes[i]` is node i's weight, `edges` (a, b,
/// weight) undirected.
pub fn order(sizes: &[f64], edges: &[(usize, usize, f64)]) -> Vec<usize> {
    let n = sizes.len();
    let mut adjacent: Vec<BTreeMap<usize, f64>> = vec![BTreeMap::new(); n];
    for &(a, b, w) in edges {
        if a < n && b < n && a != b {
            *adjacent[a].entry(b).or_default() += w;
            *adjacent[b].entry(a).or_default() += w;
        }
    }
    let by_size = |a: &usize, b: &usize| sizes[*b].total_cmp(&sizes[*a]).then(a.cmp(b));
    let mut seen = vec![false; n];
    let mut components: Vec<(f64, Vec<usize>)> = Vec::new();
    let mut starts: Vec<usize> = (0..n).collect();
    starts.sort_by(by_size);
    for start in starts {
        if seen[start] {
            continue;
        }
        let mut walk = Vec::new();
        let mut stack = vec![start];
        while let Some(node) = stack.pop() {
            if seen[node] {
                continue;
            }
            seen[node] = true;
            walk.push(node);
            let mut neighbours: Vec<(usize, f64)> = adjacent[node]
                .iter()
                .filter(|(b, _)| !seen[**b])
                .map(|(b, w)| (*b, *w))
                .collect();
            // Lightest pushed first: the heaviest is visited next.
            neighbours.sort_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0)));
            stack.extend(neighbours.into_iter().map(|(b, _)| b));
        }
        let total = walk.iter().map(|&i| sizes[i]).sum();
        components.push((total, walk));
    }
    // Stable: equal totals keep the order of their largest nodes.
    components.sort_by(|x, y| y.0.total_cmp(&x.0));
    components.into_iter().flat_map(|(_, walk)| walk).collect()
}

/// Places nodes of radii `radii` around a circle in `order`, at least `gap` apart, with
/// `margin` around the circle for the labels. Each node gets an arc of
/// `π/2 · (2r + gap)`: two neighbours' centres are then at least `π/2 · (r₁ + r₂ + gap)`
/// apart along the circle either way, and since a chord is at least `2/π` of its arc
/// (for arcs up to a half circle), at least `r₁ + r₂ + gap` apart in the plane.
pub fn circle(radii: &[f64], order: &[usize], gap: f64, margin: f64) -> Circle {
    let largest = radii.iter().copied().fold(0.0, f64::max);
    let arcs: Vec<f64> = order
        .iter()
        .map(|&i| PI / 2.0 * (2.0 * radii[i] + gap))
        .collect();
    let circumference: f64 = arcs.iter().sum();
    let radius = if order.len() < 2 {
        0.0
    } else {
        (circumference / TAU).max(4.0 * largest).max(MIN_RADIUS)
    };
    let centre = radius + largest + margin;
    let mut points = vec![
        Point {
            x: centre,
            y: centre,
            angle: 0.0,
        };
        radii.len()
    ];
    let scale = if circumference > 0.0 {
        TAU / circumference
    } else {
        0.0
    };
    let mut along = 0.0;
    for (&i, arc) in order.iter().zip(&arcs) {
        // The first node at the top; the angle of a node is the middle of its arc.
        let angle = (along + arc / 2.0) * scale - PI / 2.0;
        along += arc;
        points[i] = Point {
            x: centre + radius * angle.cos(),
            y: centre + radius * angle.sin(),
            angle,
        };
    }
    Circle {
        points,
        centre,
        radius,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_nodes_overlap() {
        for n in [1usize, 2, 3, 9, 200] {
            // Sizes from tiny to 40x larger, deterministic.
            let radii: Vec<f64> = (0..n).map(|i| 4.0 + ((i * 37) % 41) as f64).collect();
            let edges: Vec<(usize, usize, f64)> =
                (1..n).map(|i| (i, (i * 7) % i.max(1), i as f64)).collect();
            let order = order(&radii, &edges);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "every node once");
            let c = circle(&radii, &order, 4.0, 100.0);
            for i in 0..n {
                let p = c.points[i];
                assert!(p.x - radii[i] >= 0.0 && p.y - radii[i] >= 0.0);
                for j in i + 1..n {
                    let q = c.points[j];
                    let d = ((p.x - q.x).powi(2) + (p.y - q.y).powi(2)).sqrt();
                    assert!(
                        d >= radii[i] + radii[j] + 4.0 - 1e-9,
                        "{n} nodes: {i} and {j} overlap ({d} apart)"
                    );
                }
            }
        }
    }

    #[test]
    fn relatives_follow_their_model() {
        // A hub (0) with two spokes (1, 2), each with a relative (3 of 1, 4 of 2): depth
        // first keeps each relative next to its spoke.
        let edges = [(0, 1, 5.0), (0, 2, 4.0), (1, 3, 9.0), (2, 4, 9.0)];
        let order = order(&[9.0, 5.0, 5.0, 1.0, 1.0], &edges);
        assert_eq!(order, vec![0, 1, 3, 2, 4]);
    }

    #[test]
    fn related_nodes_are_neighbours() {
        // 0-2 strongly related, 1 alone: 0 and 2 come together, the larger component first.
        let order = order(&[5.0, 9.0, 6.0], &[(0, 2, 10.0)]);
        assert_eq!(order, vec![2, 0, 1]);
    }
}
